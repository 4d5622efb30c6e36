"""Run a notebook's code cells in order as one Python script, where Jupyter is not installed.

    python tools/notebook_script.py notebooks/06_gpu_training.ipynb [--figures FIGURES.json]

For a machine that has torch but no Jupyter and no registry to fetch it from: the lent GPU machine of
tools/gpu_run.sh. Like a kernel, it prints the value of a cell's last expression; figures are drawn
off screen (matplotlib's Agg). Magics cannot run here: a cell that starts with % or ! fails with a
clear error. ``--figures`` writes the notebook's plain values after every cell (numbers, strings, and
lists and dicts of them), so that a results file is made from data rather than retyped from the log,
even when a time limit stops the run.
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


def plain(value: object, depth: int = 0) -> object:
    """``value`` as JSON (dict keys as strings, torch's dtypes and devices by name), or ``Ellipsis``
    where it is not plain data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__module__ == "torch" and type(value).__name__ in ("dtype", "device"):
        return str(value)
    if depth < 3 and isinstance(value, (list, tuple, dict)) and len(value) <= 100:
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        items = {key: plain(item, depth + 1) for key, item in pairs}
        if Ellipsis not in items.values():
            return {str(key): item for key, item in items.items()} if isinstance(value, dict) \
                else list(items.values())
    return Ellipsis


def main(notebook: str, *options: str) -> None:
    figures = Path(options[1]) if options[:1] == ("--figures",) else None
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    for number, source in enumerate(code_cells(Path(notebook)), start=1):
        print(f"--- cell {number}", flush=True)
        run_cell(source, f"{notebook} cell {number}", namespace)
        if figures:
            values = {name: plain(value) for name, value in namespace.items() if not name.startswith("_")}
            values = {name: value for name, value in values.items() if value is not Ellipsis}
            part = figures.with_name(figures.name + ".part")  # replaced whole: a run killed keeps the last
            part.write_text(json.dumps({"after cell": number, **values}, indent=1) + "\n")
            part.replace(figures)


if __name__ == "__main__":
    main(*sys.argv[1:])
