"""Executes the notebooks top to bottom in their reduced-size mode and checks what they show.

The notebook runs in a real Jupyter kernel (`nbclient`), from its own folder, with `MBLS_NOTEBOOK_SMOKE=1` and the
Hugging Face libraries offline: a cell that errors fails the test, and so does any attempt to reach the network.
After the last cell, the test asks the same kernel for the predictions and recomputes the ECE with its own float64
binning, independent of `mbls_nlp.calibration`.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
DATA_DIR = REPO.parent / "shared" / "data" / "20newsgroups"
KERNEL_NAME = "python3"

# Printed by the probe cell that the test appends: the kernel's state after the notebook ran, as JSON.
PROBE = r"""
import json as _json
print(_json.dumps({
    "metrics_table": {"index": list(metrics_table.index), "columns": list(metrics_table.columns),
                      "values": metrics_table.to_numpy().tolist()},
    "temperature_table": {"index": list(temperature_table.index), "columns": list(temperature_table.columns),
                          "values": temperature_table.to_numpy().tolist()},
    "agreement": agreement,
    "smoke": SMOKE,
    "max_test_samples": MAX_TEST_SAMPLES,
    "predictions": {name: {"logits": out.predictions.tolist(), "labels": out.label_ids.tolist(),
                           "metrics": out.metrics} for name, out in predictions.items()},
    "temperatures": {name: trainer.temperature for name, trainer in trainers.items()},
    "results": {name: output.metrics for name, output in outputs.items()},
}))
"""


def _kernel_manager():
    # The kernel runs this interpreter, whatever kernelspecs the machine has registered: with no kernel folders,
    # jupyter_client falls back to ipykernel's native "python3" spec, which launches sys.executable. A fresh CI venv
    # (ipykernel from the `test` extra, nothing registered) and a machine whose "python3" points at another Python
    # behave the same.
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def _reference_ece(logits, labels, n_bins=15):
    # Float64 reference written here: softmax, top-label confidence, equal-width bins (lo, hi] with confidence 0 in
    # the first bin; ECE = sum_b |acc_b - conf_b| * n_b / N.
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == np.asarray(labels)).astype(np.float64)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        if in_bin.any():
            total += abs(correct[in_bin].mean() - conf[in_bin].mean()) * in_bin.sum()
    return total / len(conf), correct.mean()


def _execute(path, monkeypatch):
    monkeypatch.setenv("MBLS_NOTEBOOK_SMOKE", "1")
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        km=_kernel_manager(),
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(path.parent)}},  # run from the notebook's folder, like Jupyter
    )
    probe = nbformat.v4.new_code_cell(PROBE)
    cells = list(nb.cells)
    nb.cells.append(probe)  # nbclient writes each executed cell back into the notebook at its index
    with client.setup_kernel():
        for index, cell in enumerate(cells):
            client.execute_cell(cell, index)  # raises CellExecutionError on the first failing cell
        client.execute_cell(probe, len(cells))
    nb.cells.pop()
    text = "".join(out.get("text", "") for out in probe.outputs if out.get("name") == "stdout")
    return nb, json.loads(text.strip().splitlines()[-1])


def test_notebooks_are_listed_and_stored_without_outputs():
    notebooks = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert notebooks, "no notebook found"
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for name in notebooks:
        assert name in readme, f"{name} is not listed in notebooks/README.md"
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        # Outputs are stripped in the repository (see notebooks/README.md): none may be stale.
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name} has committed outputs"


def test_quickstart_uses_only_the_public_api():
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    for line in source.splitlines():
        if line.startswith(("from mbls_nlp", "import mbls_nlp")):
            assert "._" not in line and " _" not in line, f"private name imported: {line}"
    assert "mbls_nlp." not in source.replace("from mbls_nlp.", ""), "only imports may name submodules"


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"20 Newsgroups files not found at {DATA_DIR} (tests stay offline)")
def test_quickstart_runs_top_to_bottom(monkeypatch):
    nb, state = _execute(NOTEBOOKS / "quickstart.ipynb", monkeypatch)
    assert state["smoke"] is True

    # Every code cell ran; the two diagram cells each displayed one figure.
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    errors = [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
    assert not errors
    pngs = [out for cell in code_cells for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(pngs) == 2

    # The displayed table has both runs as rows.
    table_html = [
        out["data"]["text/html"]
        for cell in code_cells
        for out in cell.outputs
        if "text/html" in out.get("data", {}) and "ece" in out["data"]["text/html"]
    ]
    assert table_html and all(">ce<" in html and ">mbls<" in html for html in table_html)

    metrics = state["metrics_table"]
    assert metrics["index"] == ["ce", "mbls"]
    assert metrics["columns"] == ["accuracy", "ece", "aece", "cece", "mce", "brier", "nll"]
    for row in metrics["values"]:
        assert all(math.isfinite(v) for v in row)
        assert all(0.0 <= v <= 100.0 for v in row[:5])  # percentages
        assert 0.0 <= row[5] <= 200.0  # Brier score in percent lies in [0, 2]

    for name, pred in state["predictions"].items():
        logits, labels = np.asarray(pred["logits"]), np.asarray(pred["labels"])
        assert logits.shape == (state["max_test_samples"], 20)
        ece, accuracy = _reference_ece(logits, labels)
        row = metrics["values"][metrics["index"].index(name)]
        # The table (percent) shows the trainer's metrics, equal to the float64 reference.
        assert row[metrics["columns"].index("ece")] == pytest.approx(100 * ece, abs=1e-4)
        assert row[metrics["columns"].index("accuracy")] == pytest.approx(100 * accuracy, abs=1e-9)
        # The evaluate module on the probabilities gives the same ECE.
        assert state["agreement"][name]["evaluate ece"] == pytest.approx(ece, abs=1e-6)
        # After temperature scaling with the fitted T: ts_ece is the reference ECE of logits / T, accuracy unchanged.
        temperature = state["temperatures"][name]
        # The protocol's results carry the fitted temperature once, as `temperature`.
        assert temperature > 0 and state["results"][name]["temperature"] == pytest.approx(temperature)
        assert "test_temperature" not in pred["metrics"] and "test_temperature" not in state["results"][name]
        ts_ece, ts_accuracy = _reference_ece(logits / temperature, labels)
        assert pred["metrics"]["test_ts_ece"] == pytest.approx(ts_ece, abs=1e-6)
        assert ts_accuracy == accuracy

    temperature_table = state["temperature_table"]
    assert temperature_table["index"] == ["ce", "mbls"]
    assert temperature_table["columns"][0] == "T"
    assert [row[0] for row in temperature_table["values"]] == pytest.approx(
        [state["temperatures"]["ce"], state["temperatures"]["mbls"]]
    )


def test_probe_reference_ece_on_hand_computed_case():
    # Guards the test's own reference. Logits [ln 3, 0] -> p = (0.75, 0.25): confidence 0.75, predicted 0.
    # Two samples, labels 0 and 1: both in bin (0.733, 0.8], accuracy 1/2, confidence 0.75 -> ECE = 0.25.
    logits = [[math.log(3.0), 0.0], [math.log(3.0), 0.0]]
    ece, accuracy = _reference_ece(logits, [0, 1])
    assert ece == pytest.approx(0.25) and accuracy == 0.5
    assert os.path.isdir(NOTEBOOKS)
