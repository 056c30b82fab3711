"""The notebooks in notebooks/, executed with a real Jupyter kernel on the
project's venv and real Caffe over a small real demo (what `make notebooks`
does), and the README's "From Python" example, run as written."""
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

from conftest import BIN, ROOT, jcdl

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RUNNER = ROOT / "tools" / "run_notebooks.py"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "demo"
    jcdl("demo", "--out", out, "--iterations", 20, "--images", 80)
    return out


def run_notebooks(*args):
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)],
                          capture_output=True, text=True, timeout=900)


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if kind(o)]


def json_lines(nb):
    """The JSON objects the notebook printed."""
    found = []
    for o in outputs(nb, lambda o: o.get("output_type") == "stream"):
        for line in o["text"].splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
    return found


def test_committed_notebooks_have_no_outputs():
    assert {p.name for p in NOTEBOOKS} >= {"evaluate.ipynb",
                                          "compare_losses.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, \
                    path
        assert any("parameters" in c.metadata.get("tags", [])
                   for c in nb.cells), path


def test_notebooks_run_and_show_what_jcdl_evaluate_prints(demo, tmp_path):
    out = tmp_path / "executed"
    proc = run_notebooks("--set", f"DEMO={demo}", "--set", f"RUNS={demo}",
                         "--out", out, *NOTEBOOKS)
    assert proc.returncode == 0, proc.stderr
    evaluated = nbformat.read(out / "evaluate.ipynb", as_version=4)
    compared = nbformat.read(out / "compare_losses.ipynb", as_version=4)
    for nb in (evaluated, compared):
        assert not outputs(nb, lambda o: o.get("output_type") == "error")
    pngs = outputs(evaluated, lambda o: "image/png" in o.get("data", {}))
    # confusion, best, worst, KL histogram, loss, test outputs
    assert len(pngs) >= 6
    assert outputs(compared, lambda o: "image/png" in o.get("data", {}))
    for name in ("evaluate", "compare_losses"):
        html = (out / f"{name}.html").read_text()
        assert "<html" in html and "data:image/png;base64" in html

    # the measures shown equal the command's, for the same net and LMDB
    run = demo / "jcdl"
    weights = sorted((run / "snapshots").glob("*.caffemodel"))[-1]
    proc = jcdl("evaluate", "--model", run / "deploy.prototxt", "--weights",
                weights, "--db", demo / "test_lmdb", "--mean",
                demo / "mean.binaryproto")
    cli = json.loads(proc.stdout)
    shown = json_lines(evaluated)[0]
    assert shown == cli
    table = "".join(o["data"]["text/markdown"] for o in outputs(
        evaluated, lambda o: "text/markdown" in o.get("data", {})))
    assert "Clark/√K" in table and "Canberra ↓ (Geng's, unnormalised)" in table
    assert f"{cli['kl']:.4f}" in table
    variants = json_lines(compared)[0]
    assert set(variants) == {"jcdl", "kl_only", "softmax_only",
                             "jcdl_priors"}
    assert variants["jcdl"] == cli


def test_a_failing_cell_is_one_line_and_writes_nothing(demo, tmp_path):
    out = tmp_path / "executed"
    proc = run_notebooks("--set", f"RUN={tmp_path / 'nope'}", "--out", out,
                         ROOT / "notebooks" / "evaluate.ipynb")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "evaluate.ipynb: a cell failed" in last and "solver.prototxt" in last
    assert not out.exists()


def from_python_example():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## From Python\n.*?```python\n(.*?)```", text, re.S)
    assert m, "README has no 'From Python' example"
    return m.group(1)


def test_readme_from_python_example_runs_as_written(demo, tmp_path):
    (tmp_path / "runs").mkdir()
    os.symlink(demo, tmp_path / "runs" / "demo")
    (tmp_path / "example.py").write_text(from_python_example())
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([str(BIN / "python"), "example.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout
