"""The notebooks in ``notebooks/`` execute end to end in smoke mode on the real model.

Each notebook is run with nbclient in a fresh kernel of *this* interpreter: a kernel spec written
into a temporary folder (``ipykernel.kernelspec.write_kernel_spec``, argv = ``sys.executable``) is
put first on ``JUPYTER_PATH``, so no user-level ``python3`` spec pointing at another Python can be
picked up instead (the kernel's ``sys.prefix`` is checked). The committed copies must carry the outputs of a full
run (SMOKE=False, every tagged cell with its output, no error); they are cleared in memory and
executed afresh. The kernel gets
``BAYES_LORA_SMOKE=1``, the data folder and ``BAYES_LORA_NOTEBOOK_OUT`` = one temporary run
folder shared by the notebooks (in order: 02 and 03 reuse the stages 01 and 02 ran; 04 uses the
library alone and only saves its own posterior there); the
committed notebooks are never written to (executed copies go to the temporary folder).

Needs the real all-MiniLM-L6-v2 weights and ``../shared/data``; skipped cleanly otherwise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, real_setup_available

ok, why = real_setup_available()
pytestmark = [pytest.mark.real, pytest.mark.skipif(not ok, reason=why)]

NOTEBOOKS = REPO / "notebooks"
KERNEL = "bayes-lora-test-python"

#: per notebook: cell tag → the MIME type its outputs must include (with the least count)
EXPECTED = {
    "01_curve_valleys.ipynb": {
        "anchors": ("text/html", 1),
        "paths-plot": ("image/png", 1),
        "barriers": ("text/html", 1),
        "midpoints": ("text/html", 1),
        "mi-table": ("text/html", 1),
        "library-paths": ("stream", 1),
    },
    "02_compare_inference.ipynb": {
        "results-table": ("text/html", 1),
        "library-fit": ("text/html", 1),
        "vs-map": ("text/html", 1),
        "reliability": ("image/png", 2),
        "risk-coverage": ("image/png", 1),
        "reading": ("stream", 1),
    },
    "03_arviz_diagnostics.ipynb": {
        "idata-overview": ("text/html", 1),
        "nuts-summary": ("text/html", 1),
        "divergences": ("text/html", 1),
        "trace": ("image/png", 1),
        "rank": ("image/png", 1),
        "loo-table": ("text/html", 1),
        "loo-compare": ("text/html", 1),
        "bayes-compare": ("text/html", 1),
        "compare-diagnostics": ("text/html", 1),
        "p-better": ("text/html", 1),
        "vs-map": ("text/html", 1),
    },
    "04_write_your_own_posterior.ipynb": {
        "yours-beta": ("stream", 1),
        "yours-offset": ("stream", 1),
        "metrics": ("text/html", 1),
        "summary": ("text/html", 1),
        "trace": ("image/png", 1),
        "loo": ("text/html", 1),
        "compare": ("text/html", 1),
    },
}


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """Environment of the kernels: own kernel spec, smoke mode, data and one shared run folder."""
    pytest.importorskip("nbclient")
    pytest.importorskip("nbformat")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    root = tmp_path_factory.mktemp("notebooks")
    kernelspec.write_kernel_spec(root / "jupyter" / "kernels" / KERNEL,
                                 overrides={"display_name": "bayes_lora test kernel"})
    env = {
        "JUPYTER_PATH": os.pathsep.join([str(root / "jupyter"), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep),
        "BAYES_LORA_SMOKE": "1",
        "BAYES_LORA_DATA_DIR": str(SHARED_DATA),
        "BAYES_LORA_NOTEBOOK_OUT": str(root / "run"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "JAX_PLATFORMS": "cpu",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield root


def _outputs(cell) -> list[str]:
    """The MIME types (or 'stream') of a code cell's outputs, one entry per output."""
    kinds = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            kinds.append("stream")
        kinds.extend(out.get("data", {}))
    return kinds


def _check_committed_outputs(name, nb) -> None:
    """The committed copy carries the outputs of a full (not smoke) run, without errors."""
    first = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "stream")
    assert "SMOKE=False" in first, f"{name}: commit the notebook executed on a full run (SMOKE=False)"
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"], f"{name}: the committed outputs hold an error"
    tagged = {t: c for c in nb.cells if c.cell_type == "code" for t in c.metadata.get("tags", [])}
    for tag, (mime, least) in EXPECTED[name].items():
        assert _outputs(tagged[tag]).count(mime) >= least, f"{name}: committed cell {tag!r} lacks its {mime} output"


#: the default suite executes 02 (the runner's pipeline, the library's fit/evaluate on its stages);
#: 01, 03 and 04 (the library alone: its calls are tested in tests/models/test_user_models.py) run
#: with the slow tests (``make test-all``): the same kinds of call, two more minutes of kernel time
SLOW = {"01_curve_valleys.ipynb", "03_arviz_diagnostics.ipynb", "04_write_your_own_posterior.ipynb"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXPECTED])
def test_notebook_executes_in_smoke_mode(name, notebook_env):
    import nbformat
    from nbclient import NotebookClient

    path = NOTEBOOKS / name
    assert path.is_file(), f"{path} is missing"
    nb = nbformat.read(path, as_version=4)
    _check_committed_outputs(name, nb)
    for c in nb.cells:  # executed afresh below
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert params and nb.cells.index(params[0]) <= 2, "the parameters cell comes first"
    assert "BAYES_LORA_SMOKE" in params[0].source and "BAYES_LORA_NOTEBOOK_OUT" in params[0].source

    # which Python the kernel runs: a probe cell appended to the in-memory copy only
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=1800,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    finally:
        nbformat.write(nb, notebook_env / f"executed_{name}")

    probe = nb.cells.pop()
    assert probe.outputs[0]["text"].strip() == sys.prefix, "the kernel is not this environment's Python"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]
    assert not errors
    tagged = {t: c for c in nb.cells if c.cell_type == "code" for t in c.metadata.get("tags", [])}
    for tag, (mime, least) in EXPECTED[name].items():
        assert tag in tagged, f"{name}: no cell tagged {tag!r}"
        got = _outputs(tagged[tag])
        assert got.count(mime) >= least, f"{name}, cell {tag!r}: expected {least}× {mime}, got {got}"
    run = Path(os.environ["BAYES_LORA_NOTEBOOK_OUT"])
    if name == "04_write_your_own_posterior.ipynb":  # the library alone: no runner stages
        assert (run / "own_posterior" / "posterior.json").is_file()
        return
    assert (run / "stages" / "curve" / "manifest.json").is_file()
    if name != "01_curve_valleys.ipynb":
        assert (run / "results.json").is_file() and (run / "idata").is_dir()
