#!/usr/bin/env python3
"""Executes notebooks headless with a real Jupyter kernel on this Python
(the project's venv: pycaffe and jcdl), and writes each executed notebook
and an HTML copy into OUT (``make notebooks``).

  run_notebooks.py [--set NAME=VALUE ...] --out OUT NOTEBOOK...

``--set`` overrides a parameter of the notebooks' cell tagged
``parameters`` (a cell after it assigns the values, as papermill does);
VALUE is a Python literal, else a string. The kernel runs in each
notebook's folder, as Jupyter runs it. A cell that fails ends the run
with one line naming the notebook and the cell, exit status 1; OUT's
files appear only when complete."""
import argparse
import ast
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from jcdl.files import atomic_output  # noqa: E402


def parameter(text):
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def execute(path, params, timeout=900):
    """The executed notebook (nbformat) of ``path`` with ``params``."""
    import nbformat  # noqa: PLC0415
    from nbclient import NotebookClient  # noqa: PLC0415
    nb = nbformat.read(path, as_version=4)
    if params:
        where = next((i for i, c in enumerate(nb.cells)
                      if "parameters" in c.metadata.get("tags", [])), -1)
        cell = nbformat.v4.new_code_cell(
            "# injected by run_notebooks.py\n" +
            "".join(f"{k} = {v!r}\n" for k, v in params))
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(where + 1, cell)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path":
                                                    str(path.parent)}})
    client.execute()
    return nb


def write(nb, out, name):
    import nbformat  # noqa: PLC0415
    from nbconvert import HTMLExporter  # noqa: PLC0415
    html, _ = HTMLExporter().from_notebook_node(nb)
    with atomic_output(out / f"{name}.ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    with atomic_output(out / f"{name}.html") as tmp:
        Path(tmp).write_text(html, encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", type=parameter, action="append", default=[],
                   metavar="NAME=VALUE")
    args = p.parse_args(argv)
    from nbclient.exceptions import CellExecutionError  # noqa: PLC0415
    # the kernel is this Python, with Caffe's INFO lines off
    os.environ.setdefault("GLOG_minloglevel", "2")
    for path in args.notebooks:
        if not path.is_file():
            print(f"run_notebooks: {path}: no such notebook", file=sys.stderr)
            return 1
        try:
            nb = execute(path, args.set)
        except CellExecutionError as e:
            last = [line for line in str(e).splitlines() if line.strip()]
            print(f"run_notebooks: {path}: a cell failed: "
                  f"{last[-1] if last else e}", file=sys.stderr)
            return 1
        write(nb, args.out, path.stem)
        print(args.out / f"{path.stem}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
