"""Every notebook in notebooks/ runs top to bottom, in its small configuration."""

import json
import pathlib
import re
import sys

import pytest


nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "jaxdeq-tests"
# Python warnings as printed into a cell's stderr, e.g. "UserWarning: ...".
WARNING = re.compile(r"\b\w+Warning: ")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    # A kernel spec of our own that runs this interpreter, first on the Jupyter path,
    # so that a `python3` kernel registered elsewhere cannot be picked up instead.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": KERNEL, "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JAXDEQ_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel is a fresh process: no float64 from the test suite's conftest.
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} is saved with outputs; clear them"
            assert cell.execution_count is None
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(kernel_env)}},
    )
    # Raises nbclient.exceptions.CellExecutionError on the first failing cell.
    client.execute()
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stderr":
                assert not WARNING.search(output.text), (
                    f"{path.name}, cell {index} warns:\n{output.text}"
                )
