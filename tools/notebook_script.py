"""Run a notebook's code cells in order as one Python script, where Jupyter is not installed.

    python tools/notebook_script.py notebooks/06_gpu_training.ipynb

For a machine that has torch but no Jupyter and no registry to fetch it from: the lent GPU machine of
tools/gpu_run.sh. Like a kernel, it prints the value of a cell's last expression; figures are drawn
off screen (matplotlib's Agg). Magics cannot run here: a cell that starts with % or ! fails with a
clear error.
"""

import ast
import json
import os
import sys
from pathlib import Path


def code_cells(notebook: Path) -> list[str]:
    """The source of each code cell, in order."""
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def run_cell(source: str, name: str, namespace: dict) -> None:
    """Run one cell in ``namespace``; print its last expression's value, as a kernel shows it (not
    after a closing ``;``)."""
    if any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()):
        raise SystemExit(f"{name} uses an IPython magic or shell escape: run it with Jupyter instead")
    tree = ast.parse(source, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
        if value is not None and not source.rstrip().endswith(";"):  # a ";" hides it, as in Jupyter
            print(repr(value))


def main(notebook: str) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    for number, source in enumerate(code_cells(Path(notebook)), start=1):
        print(f"--- cell {number}", flush=True)
        run_cell(source, f"{notebook} cell {number}", namespace)


if __name__ == "__main__":
    main(*sys.argv[1:])
