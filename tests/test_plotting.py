import doctest
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import mbls_nlp.plotting
from mbls_nlp.calibration import expected_calibration_error, reliability_bins
from mbls_nlp.plotting import reliability_diagram, save_reliability_diagram

matplotlib = pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _over_confident(n=2000, c=10, seed=0):
    # Labels drawn from softmax(z) (calibrated), logits 3 * z: the diagram must show accuracy below confidence.
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g)
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return 3 * z, labels


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # The IHDR chunk follows the magic: 4-byte length, b"IHDR", then big-endian width and height.
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_save_writes_png_and_bin_table(tmp_path):
    logits, labels = _over_confident()
    path = tmp_path / "plots" / "reliability.png"
    table = save_reliability_diagram(path, logits, labels, n_bins=10, title="over-confident", dpi=100)
    assert path.stat().st_size > 10_000  # a real rendered figure, not an empty canvas
    width, height = _png_size(path)
    # figsize (5.0, 6.2) inches at dpi 100.
    assert (width, height) == (500, 620)
    expected = reliability_bins(logits, labels, n_bins=10)
    with open(path.with_suffix(".json"), encoding="utf-8") as f:
        assert json.load(f) == expected
    assert table == expected
    assert sum(table["count"]) == len(labels)


def test_figure_contents(tmp_path):
    logits, labels = _over_confident(seed=1)
    labels[::7] = -100
    fig = reliability_diagram(logits, labels, n_bins=15, title="CE")
    ax_rel, ax_hist = fig.axes
    bins = reliability_bins(logits, labels, n_bins=15)
    filled = [i for i, n in enumerate(bins["count"]) if n > 0]
    # First bar container: accuracy of each non-empty bin; second: the gap from accuracy to confidence.
    acc_bars, gap_bars = ax_rel.containers
    assert [b.get_height() for b in acc_bars] == pytest.approx([bins["accuracy"][i] for i in filled])
    assert [b.get_x() for b in acc_bars] == pytest.approx([bins["bin_lower"][i] for i in filled])
    tops = [b.get_y() + b.get_height() for b in gap_bars]
    assert tops == pytest.approx([bins["confidence"][i] for i in filled])
    # Histogram: one bar per bin with the bin's count, under the diagram.
    (hist_bars,) = ax_hist.containers
    assert [b.get_height() for b in hist_bars] == bins["count"]
    assert ax_hist.get_position().y1 <= ax_rel.get_position().y0 + 1e-9
    # ECE in the legend, in percent with two decimals; the diagonal is labelled.
    ece = expected_calibration_error(logits, labels, n_bins=15)
    legend = ax_rel.get_legend()
    assert legend.get_title().get_text() == f"ECE = {100 * ece:.2f}%"
    assert {t.get_text() for t in legend.get_texts()} == {"Perfect calibration", "Accuracy", "Gap"}
    assert ax_rel.get_title() == "CE"


def test_gap_bars_look_like_their_legend_swatch():
    # issue 13: a translucent gap drawn over the accuracy bar (under-confident bins) showed another colour than the
    # legend's swatch; the gap is opaque, so every gap bar has exactly the swatch's colour.
    from matplotlib.colors import to_rgba

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=generator) * 0.3  # low confidence ...
    labels = logits.argmax(1)  # ... always right: under-confident bins
    labels[:40] = (labels[:40] + 1) % 4
    fig = reliability_diagram(logits, labels, n_bins=10)
    ax_rel = fig.axes[0]
    _, gap_bars = ax_rel.containers
    swatch = next(h for h, t in zip(ax_rel.get_legend().legend_handles, ax_rel.get_legend().get_texts())
                  if t.get_text() == "Gap")  # fmt: skip
    assert any(b.get_height() < 0 for b in gap_bars)  # some bins are under-confident
    for bar in gap_bars:
        assert bar.get_facecolor() == pytest.approx(swatch.get_facecolor())
        assert bar.get_facecolor()[3] == 1.0 and bar.get_facecolor() == pytest.approx(to_rgba("#f3bebe"))


def test_per_bin_intervals(tmp_path):
    logits, labels = _over_confident(n=300, seed=2)
    fig = reliability_diagram(logits, labels, n_bins=10, confidence=0.9)
    ax_rel = fig.axes[0]
    bins = reliability_bins(logits, labels, n_bins=10, confidence=0.9)
    filled = [i for i, n in enumerate(bins["count"]) if n > 0]
    acc_bars, gap_bars, errorbars = ax_rel.containers
    # one vertical segment per non-empty bin, at the bin's centre, from the interval's low to its high end
    (segments,) = errorbars.lines[2]
    for segment, i in zip(segments.get_segments(), filled, strict=True):
        (x0, y0), (x1, y1) = segment
        assert x0 == x1 == pytest.approx((bins["bin_lower"][i] + bins["bin_upper"][i]) / 2)
        assert (y0, y1) == pytest.approx((bins["accuracy_low"][i], bins["accuracy_high"][i]))
    labels_in_legend = {t.get_text() for t in ax_rel.get_legend().get_texts()}
    assert "90% interval (Wilson)" in labels_in_legend
    table = save_reliability_diagram(tmp_path / "r.png", logits, labels, n_bins=10, confidence=0.9)
    assert json.loads((tmp_path / "r.json").read_text()) == table == bins
    assert "accuracy_low" not in save_reliability_diagram(tmp_path / "plain.png", logits, labels, n_bins=10)
    with pytest.raises(ValueError, match="`confidence`"):
        reliability_diagram(logits, labels, confidence=95)


def test_does_not_touch_pyplot_or_the_backend(tmp_path):
    # In a fresh interpreter (other tests may have imported pyplot): drawing and saving must neither import pyplot
    # (which would pick a GUI backend and register figures that leak) nor change the configured backend.
    code = (
        "import sys, torch, matplotlib\n"
        "backend = matplotlib.rcParams._get_backend_or_none()\n"
        "from mbls_nlp.plotting import save_reliability_diagram\n"
        f"save_reliability_diagram({str(tmp_path / 'r.png')!r}, torch.randn(64, 3), torch.randint(0, 3, (64,)))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() == backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_draws_into_given_axes_with_probabilities():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=300)
    labels = rng.integers(0, 4, size=300)
    out = reliability_diagram(probs, labels, from_logits=False, n_bins=5, ax=ax)
    assert out is fig
    assert len(fig.axes) == 2  # the caller's axes (still the same object) plus the histogram split off its cell
    assert fig.axes[0] is ax
    counts = reliability_bins(probs, labels, from_logits=False, n_bins=5)["count"]
    assert [b.get_height() for b in fig.axes[1].containers[0]] == counts
    fig.draw_without_rendering()
    top, bottom = ax.get_position(), fig.axes[1].get_position()
    # Under the diagram, inside the caller's right-hand cell, inside the figure.
    assert 0 <= bottom.y0 < bottom.y1 <= top.y0
    assert bottom.x0 == pytest.approx(top.x0) and top.x0 > 0.5


def test_draws_into_free_standing_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_axes((0.1, 0.4, 0.8, 0.5))  # no grid cell: the axes is split by a divider instead
    logits, labels = _over_confident(n=200)
    reliability_diagram(logits, labels, ax=ax)
    fig.draw_without_rendering()
    assert len(fig.axes) == 2 and fig.axes[1].get_position().y1 <= ax.get_position().y0


def test_bad_arguments():
    logits, labels = _over_confident(n=50)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(logits, labels, n_bins=0)
    with pytest.raises(TypeError, match="title"):
        reliability_diagram(logits, labels, title=3)
    with pytest.raises(TypeError, match="ax"):
        reliability_diagram(logits, labels, ax="left")
    with pytest.raises(TypeError, match="path"):
        save_reliability_diagram(None, logits, labels)


def test_missing_matplotlib_gives_install_hint(monkeypatch, tmp_path):
    # A None entry in sys.modules makes `import matplotlib.figure` raise ImportError, as if it were not installed.
    for name in ("matplotlib", "matplotlib.figure", "mpl_toolkits", "mpl_toolkits.axes_grid1"):
        monkeypatch.setitem(sys.modules, name, None)
    logits, labels = _over_confident(n=50)
    with pytest.raises(ImportError, match=r'pip install "mbls-nlp\[plot\]"'):
        reliability_diagram(logits, labels)
    with pytest.raises(ImportError, match=r'pip install "mbls-nlp\[plot\]"'):
        save_reliability_diagram(tmp_path / "r.png", logits, labels)
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "r.json").exists()


def test_docstring_examples_run():
    results = doctest.testmod(mbls_nlp.plotting, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 3 and results.failed == 0
