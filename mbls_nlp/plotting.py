"""Reliability diagrams (Guo et al., 2017) with a confidence histogram, drawn with matplotlib.

matplotlib is an optional extra (`pip install "mbls-nlp[plot]"`), imported only when a diagram is drawn. Figures are
built with `matplotlib.figure.Figure` directly, never through `pyplot`: no GUI backend is selected, no display is
needed, the user's global matplotlib state is left alone, and no figure stays registered (leaks) after a call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration import expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    import matplotlib.axes
    import matplotlib.figure

__all__ = ["reliability_diagram", "save_reliability_diagram"]

#: Face colour of the gap bars (and of their legend swatch): #d62728 at 30% over white, opaque.
GAP_COLOR = "#f3bebe"
_INSTALL_HINT = 'Reliability diagrams need matplotlib: pip install "mbls-nlp[plot]"'


def _import_matplotlib():
    try:
        from matplotlib.figure import Figure
        from mpl_toolkits.axes_grid1 import make_axes_locatable
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return Figure, make_axes_locatable


def _draw(
    bins: dict[str, list],
    ece: float,
    *,
    title: str | None,
    ax: matplotlib.axes.Axes | None,
    confidence: float | None = None,
) -> matplotlib.figure.Figure:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"`title` must be a str or None, got {type(title).__name__}.")
    Figure, make_axes_locatable = _import_matplotlib()
    if ax is None:
        fig = Figure(figsize=(5.0, 6.2), layout="constrained")
        ax_rel, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        if not hasattr(ax, "figure") or not hasattr(ax, "bar"):
            raise TypeError(f"`ax` must be a matplotlib Axes or None, got {type(ax).__name__}.")
        fig, ax_rel = ax.figure, ax
        # Split the caller's axes rather than add a free-floating one, so the diagram stays where they put it and
        # the caller's `ax` object stays valid. A grid cell is split with a sub-gridspec, which layout engines
        # (constrained/tight) understand; free-standing axes (`fig.add_axes(rect)`) are split by a divider.
        spec = ax.get_subplotspec()
        if spec is not None:
            cells = spec.subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
            ax_rel.set_subplotspec(cells[0])
            ax_hist = fig.add_subplot(cells[1], sharex=ax_rel)
        else:
            ax_hist = make_axes_locatable(ax_rel).append_axes("bottom", size="33%", pad=0.1, sharex=ax_rel)
        ax_rel.tick_params(labelbottom=False)

    lower, upper = bins["bin_lower"], bins["bin_upper"]
    width = [u - lo for lo, u in zip(lower, upper)]
    filled = [i for i, n in enumerate(bins["count"]) if n > 0]
    x = [lower[i] for i in filled]
    w = [width[i] for i in filled]
    acc = [bins["accuracy"][i] for i in filled]
    conf = [bins["confidence"][i] for i in filled]

    ax_rel.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1, label="Perfect calibration")
    ax_rel.bar(x, acc, width=w, align="edge", color="#1f77b4", edgecolor="black", linewidth=0.6, label="Accuracy")
    # The gap is drawn from the bin's accuracy to its mean confidence: above the bar when over-confident, inside
    # it when under-confident, as in Guo et al. (2017), Figure 1. Opaque (no alpha): a translucent gap blends with
    # the accuracy bar under it, so the under-confident gaps would not have the colour of the legend's swatch.
    ax_rel.bar(
        x,
        [c - a for a, c in zip(acc, conf)],
        bottom=acc,
        width=w,
        align="edge",
        color=GAP_COLOR,
        edgecolor="#d62728",
        hatch="//",
        linewidth=0.6,
        label="Gap",
    )
    if "accuracy_low" in bins:
        # the bin's accuracy is a proportion of its n_b positions: with few positions a large gap may be noise
        low = [bins["accuracy_low"][i] for i in filled]
        high = [bins["accuracy_high"][i] for i in filled]
        ax_rel.errorbar(
            [xi + wi / 2 for xi, wi in zip(x, w)],
            acc,
            yerr=[[a - lo for a, lo in zip(acc, low)], [hi - a for a, hi in zip(acc, high)]],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=2,
            label=f"{100 * confidence:g}% interval (Wilson)",
        )
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1)
    ax_rel.set_ylabel("Accuracy")
    # "best": no corner is free for every model (over-confident bars fill the lower right, under-confident
    # ones the upper left).
    ax_rel.legend(loc="best", title=f"ECE = {100 * ece:.2f}%", frameon=True)
    ax_rel.grid(True, linestyle=":", linewidth=0.5)
    if title is not None:
        ax_rel.set_title(title)

    ax_hist.bar(lower, bins["count"], width=width, align="edge", color="0.55", edgecolor="black", linewidth=0.6)
    ax_hist.set_xlim(0, 1)
    ax_hist.set_xlabel("Confidence")
    ax_hist.set_ylabel("Count")
    ax_hist.grid(True, axis="y", linestyle=":", linewidth=0.5)
    return fig


def reliability_diagram(
    scores: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    from_logits: bool = True,
    ignore_index: int = -100,
    title: str | None = None,
    ax: matplotlib.axes.Axes | None = None,
    confidence: float | None = None,
) -> matplotlib.figure.Figure:
    """Draws a reliability diagram: per-bin accuracy against the diagonal, the gap to the mean confidence shaded,
    the ECE in the legend, and the number of samples per confidence bin in a second axis under it; with
    `confidence`, an error bar on each bin's accuracy (its Wilson score interval).

    Args:
        scores (`torch.Tensor` or `np.ndarray` of shape `(N, C)` or `(N, C, d1, ...)`):
            Logits, or probabilities with `from_logits=False`; classes on dim 1.
        labels (`torch.Tensor` or `np.ndarray` of shape `(N,)` or `(N, d1, ...)`):
            Integer class indices in `[0, C)`, or `ignore_index`.
        n_bins (`int`, *optional*, defaults to `15`):
            Number of equal-width confidence bins (the ECE's bins).
        from_logits (`bool`, *optional*, defaults to `True`):
            Whether `scores` are logits (a softmax is applied) or probabilities.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Positions with this label are excluded.
        title (`str`, *optional*):
            Title of the diagram.
        ax (`matplotlib.axes.Axes`, *optional*):
            Axes to draw into; the histogram is placed in a strip split off its bottom. By default a new
            `Figure` (not registered with `pyplot`) is created.
        confidence (`float`, *optional*):
            Coverage in (0, 1), e.g. 0.95: draws the Wilson score interval of each bin's accuracy (see
            `mbls_nlp.calibration.reliability_bins`), so that a gap within the noise of a sparse bin shows as such.

    Returns:
        `matplotlib.figure.Figure`: the figure holding the diagram.

    Examples:

    ```python
    >>> import torch
    >>> from mbls_nlp.plotting import reliability_diagram
    >>> fig = reliability_diagram(torch.randn(100, 5), torch.randint(0, 5, (100,)), title="CE", confidence=0.95)
    >>> fig.savefig("reliability.png")  # doctest: +SKIP

    ```
    """
    kwargs = {"n_bins": n_bins, "from_logits": from_logits, "ignore_index": ignore_index}
    bins = reliability_bins(scores, labels, **kwargs, confidence=confidence)
    ece = expected_calibration_error(scores, labels, **kwargs)
    return _draw(bins, ece, title=title, ax=ax, confidence=confidence)


def save_reliability_diagram(
    path: str | os.PathLike,
    scores: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    from_logits: bool = True,
    ignore_index: int = -100,
    title: str | None = None,
    dpi: int = 150,
    confidence: float | None = None,
) -> dict[str, list]:
    """Writes the reliability diagram as a PNG at `path` and its bin table as JSON next to it (same stem, `.json`).

    Args:
        path (`str` or `os.PathLike`):
            Where to write the PNG (written as PNG whatever the suffix); missing parent folders are created.
        scores, labels, n_bins, from_logits, ignore_index, title, confidence:
            As in [`reliability_diagram`].
        dpi (`int`, *optional*, defaults to `150`):
            Resolution of the PNG.

    Returns:
        `dict[str, list]`: the bin table written to the JSON file, i.e. `mbls_nlp.calibration.reliability_bins`'s
        output: `bin_lower`, `bin_upper`, `count`, `confidence`, `accuracy` (`None` for empty bins), and with
        `confidence` the intervals `accuracy_low`, `accuracy_high`.

    Examples:

    ```python
    >>> import os, tempfile
    >>> import torch
    >>> from mbls_nlp.plotting import save_reliability_diagram
    >>> path = os.path.join(tempfile.mkdtemp(), "reliability.png")
    >>> table = save_reliability_diagram(path, torch.randn(100, 5), torch.randint(0, 5, (100,)), n_bins=10)
    >>> len(table["count"]), sum(table["count"])
    (10, 100)
    >>> sorted(os.listdir(os.path.dirname(path)))
    ['reliability.json', 'reliability.png']

    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    # Fail on a missing matplotlib before computing anything.
    _import_matplotlib()
    kwargs = {"n_bins": n_bins, "from_logits": from_logits, "ignore_index": ignore_index}
    bins = reliability_bins(scores, labels, **kwargs, confidence=confidence)
    ece = expected_calibration_error(scores, labels, **kwargs)
    fig = _draw(bins, ece, title=title, ax=None, confidence=confidence)
    png_path = Path(path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, format="png", dpi=dpi)
    with open(png_path.with_suffix(".json"), "w", encoding="utf-8") as f:
        json.dump(bins, f, indent=2)  # plain Python numbers already, None for an empty bin
    return bins
