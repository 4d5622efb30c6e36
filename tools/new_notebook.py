"""Start a new lesson notebook with the series' frame in place (README, "For teachers and contributors").

    python tools/new_notebook.py 08 instance_masks "Instance masks: one id per object"

writes notebooks/08_instance_masks.ipynb: the title with objectives and prerequisites, the Colab cell
(copied from 00, as every notebook has it), a setup cell, one worked step with an assert, two exercises
(stub, self-check, collapsed solution and graded check, marked for nbgrader) and a summary that links to
the next notebook. Run from a fresh kernel and saved, it passes the checks of a lesson's form, all but
one: what the lesson must replace is marked "(...", every such note and the two example exercises, and
tests/test_repository.py fails until none is left. A new lesson goes after the last one: numbers in
between would mean renaming the later notebooks and their nbgrader ids. It prints what else to update.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INTRO = """# {number} {title}

(... one paragraph: what the reader builds here, and why it matters after notebook {previous})

**You will be able to:**

- (... what the reader can do at the end: one line each, three to five of them)
- (...)
- (...)

**Prerequisites:** notebook {previous} (...). Under a minute on a 2-core CPU."""

SETUP = '''import torch

from helpers.masks import CLASSES, IGNORE_INDEX
from helpers.paths import data_dir
from helpers.seeding import seed_everything

SHAPES = data_dir("shapes")  # the series' offline images and masks (02)
SEED = 0                     # the same numbers on every run
seed_everything(SEED)
print(f"{len(CLASSES)} classes: {', '.join(CLASSES)}")'''

STEP = '''from helpers.datasets import SegmentationDataset

train_set = SegmentationDataset(SHAPES, "train")
image, mask = train_set[0]
# each fact the lesson states is an assert, so the tests notice when it stops being true
assert image.dtype == torch.uint8 and image.shape[1:] == mask.shape
print(f"{len(train_set)} pairs; image {tuple(image.shape)}, mask {tuple(mask.shape)} {mask.dtype}")'''

EXERCISES = [  # (heading, task, stub, self-check, solution): placeholders that show the pattern
    ("(... an example) how many classes does a mask show?",
     "Write `classes_in(mask)`: how many different classes a mask holds, not counting `IGNORE_INDEX`.",
     '''def classes_in(mask: torch.Tensor) -> int | None:
    """Number of classes in ``mask``, IGNORE_INDEX not counted. Replace `return None`."""
    return None''',
     '''def check_classes_in(classes_in) -> bool:
    if classes_in(torch.zeros(2, 2, dtype=torch.int64)) is None:
        print("Not solved yet: fill in classes_in above, run it, then run this cell again.")
        return False
    assert classes_in(torch.tensor([[0, 3], [IGNORE_INDEX, 3]])) == 2, "IGNORE_INDEX is no class"
    for _, mask in [train_set[i] for i in range(4)]:
        assert classes_in(mask) == len(mask.unique()), "count each class once"
    print("Correct")
    return True''',
     '''def classes_in(mask: torch.Tensor) -> int:
    """Number of classes in ``mask``, IGNORE_INDEX not counted."""
    return len(set(mask.unique().tolist()) - {IGNORE_INDEX})'''),
    ("(... an example) which object is largest?",
     "Write `largest_object(mask)`: the name (from `CLASSES`) of the object class with the most pixels.",
     '''def largest_object(mask: torch.Tensor) -> str | None:
    """Name of the object class (not background) with the most pixels. Replace `return None`."""
    return None''',
     '''def check_largest_object(largest_object) -> bool:
    mask = torch.tensor([[0, 0, 0], [0, 2, 2], [1, 2, 0]])
    if largest_object(mask) is None:
        print("Not solved yet: fill in largest_object above, run it, then run this cell again.")
        return False
    assert largest_object(mask) == "square", "background is no object; count pixels per class"
    print("Correct")
    return True''',
     '''def largest_object(mask: torch.Tensor) -> str:
    """Name of the object class (not background) with the most pixels."""
    counts = torch.bincount(mask[mask != IGNORE_INDEX].flatten(), minlength=len(CLASSES))
    return CLASSES[1 + int(counts[1:].argmax())]'''),
]


def cell(kind: str, text: str, **metadata) -> dict:
    """A notebook cell of ``kind`` ("markdown" or "code") holding ``text``."""
    lines = text.splitlines(keepends=True)
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": metadata, "source": lines}
    return {"cell_type": "code", "execution_count": None, "metadata": metadata, "outputs": [],
            "source": lines}


def grading(number: str, exercise: int, part: str) -> dict:
    """nbgrader's marks: a solution cell it empties in student copies, or a graded check it scores."""
    solution = part == "solution"
    marks = {"grade": not solution, "grade_id": f"nb{number}-exercise{exercise}-{part}",
             "locked": not solution, "schema_version": 3, "solution": solution, "task": False}
    return marks if solution else {**marks, "points": 1}


def exercise_cells(number: str, exercise: int, heading: str, task: str, stub: str, check: str,
                   solution: str) -> list[dict]:
    """Stub, self-check (run on the stub), collapsed solution, and the graded check on the solution."""
    name = re.search(r"def (check_\w+)\((\w+)\)", check)
    call = f"solved = {name.group(1)}({name.group(2)})"
    return [cell("markdown", f"## Exercise {exercise}: {heading}\n\n{task}"),
            cell("code", stub),
            cell("markdown", "Self-check:"),
            cell("code", f"# NBVAL_CHECK_OUTPUT\n{check}\n\n{call}"),  # nbval: "Not solved" on the stub
            cell("markdown", "Solution:"),
            cell("code", f"### BEGIN SOLUTION\n{solution}\n### END SOLUTION",
                 jupyter={"source_hidden": True}, nbgrader=grading(number, exercise, "solution")),
            cell("code", f"{call}  # (... renamed as above)\n"
                         '### BEGIN HIDDEN TESTS\nassert solved, "not solved"\n### END HIDDEN TESTS',
                 nbgrader=grading(number, exercise, "check"))]


NEXT = """wrote {path}
next, as README.md says ("For teachers and contributors", Adding a notebook): write the lesson in place of
every "(..." note; link it from {previous}'s last cell (in place of its end of the series), 00's table and
TEACHING.md; measure every notebook (tools/binder_check.py --json results/binder.json --readme: it adds the
README's row); run 00 and it from a fresh kernel; then test:
  .venv/bin/python -m pytest tests/test_repository.py tests/test_prose.py tests/test_classroom.py \\
      notebooks/00_start_here.ipynb {path}"""


def new_notebook(number: str, name: str, title: str, folder: Path) -> dict:
    """The notebook ``folder/{number}_{name}.ipynb`` starts as, after the last one, linked back to 00."""
    first = json.loads((folder / "00_start_here.ipynb").read_text(encoding="utf-8"))
    colab = first["cells"][1]
    others = sorted(path.stem for path in folder.glob("[0-9][0-9]_*.ipynb"))
    previous = others[-1][:2]  # a new lesson goes last
    ending = "This is the end of the series. Back to [00_start_here](00_start_here.ipynb) for the map."
    cells = [cell("markdown", INTRO.format(number=number, title=title, previous=previous)),
             cell("code", "".join(colab["source"]), jupyter={"source_hidden": True}, tags=["colab"]),
             cell("markdown", "## Setup\n\nWhat the whole notebook uses; each constant says why."),
             cell("code", SETUP),
             cell("markdown", "## (... the reader's question, as the section's title)\n\n"
                              "(... why the next step matters, in a sentence or two; "
                              "then code that shows it)"),
             cell("code", STEP)]
    for exercise, parts in enumerate(EXERCISES, start=1):
        cells += exercise_cells(number, exercise, *parts)
    cells.append(cell("markdown", f"## Summary\n\n- (... what the reader can now do)\n\n{ending}"))
    for index, each in enumerate(cells):
        each["id"] = f"nb{number}-{index:02d}"
    return {"cells": cells, "metadata": {"kernelspec": first["metadata"]["kernelspec"]},
            "nbformat": 4, "nbformat_minor": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("number", help="two digits: where it goes in the series, e.g. 08")
    parser.add_argument("name", help="snake_case, e.g. instance_masks")
    parser.add_argument("title", help="the notebook's title after its number")
    parser.add_argument("--folder", type=Path, default=ROOT / "notebooks")
    args = parser.parse_args()
    if not re.fullmatch(r"\d\d", args.number) or not re.fullmatch(r"[a-z0-9_]+", args.name):
        sys.exit("the number is two digits (08) and the name snake_case (instance_masks)")
    if not (args.folder / "00_start_here.ipynb").is_file():
        sys.exit(f"{args.folder} has no 00_start_here.ipynb: give the series' notebooks folder (--folder)")
    path = args.folder / f"{args.number}_{args.name}.ipynb"
    if list(args.folder.glob(f"{args.number}_*.ipynb")):
        sys.exit(f"a notebook numbered {args.number} exists already in {args.folder}")
    last = max(path.name[:2] for path in args.folder.glob("[0-9][0-9]_*.ipynb"))
    if int(args.number) != int(last) + 1:
        sys.exit(f"a new lesson goes last, as {int(last) + 1:02d}: a number in between would mean renaming "
                 "the notebooks after it and their nbgrader ids")
    notebook = new_notebook(args.number, args.name, args.title, args.folder)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path  # as typed
    print(NEXT.format(path=shown, previous=f"{int(args.number) - 1:02d}"))


if __name__ == "__main__":
    main()
