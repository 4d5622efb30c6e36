"""tools/new_notebook.py starts a lesson that passes every check of a lesson (README, contributors)."""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest
import test_repository as repository
from nbclient import NotebookClient

ROOT = repository.ROOT


def test_a_new_notebook_run_as_written_passes_every_check_of_a_lesson(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    first, last = repository.NOTEBOOKS[0], repository.NOTEBOOKS[-1]
    for path in (first, last):
        shutil.copy(path, folder)
    number = f"{int(last.name[:2]) + 1:02d}"
    command = [sys.executable, "tools/new_notebook.py", number, "instance_masks", "Instance masks",
               "--folder", str(folder)]
    made = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    path = folder / f"{number}_instance_masks.ipynb"
    assert made.returncode == 0 and f"notebooks/00_start_here.ipynb {path}" in made.stdout  # the tests
    skipped = [*command[:2], f"{int(number) + 2:02d}", *command[3:]]  # a number left out
    elsewhere = [*command[:2], f"{int(number) + 1:02d}", *command[3:5], "--folder", str(tmp_path)]
    for wrong, said in ((skipped, f"a new lesson goes last, as {int(number) + 1:02d}"),
                        (elsewhere, "has no 00_start_here.ipynb")):
        refused = subprocess.run(wrong, cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    written = path.read_bytes()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1 and f"numbered {number} exists already" in again.stderr, again.stderr
    assert path.read_bytes() == written  # kept as it was
    notebook = nbformat.read(path, as_version=4)  # run from a fresh kernel, as `nbconvert --execute` runs it
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()  # raises if a cell fails
    nbformat.write(notebook, path)

    for check in (repository.test_stored_outputs_come_from_one_clean_run,
                  repository.test_lessons_have_two_exercises_with_collapsed_solutions,
                  repository.test_every_exercise_check_says_not_solved_on_its_stub,
                  repository.test_each_notebook_opens_with_objectives_and_prerequisites_and_ends_with_a_link):
        check(path)
    with pytest.raises(AssertionError, match=r"left to replace: \['cell 0: \(\.\.\. one paragraph.*"
                                             r"'cell 12: solved = check_classes_in\(classes_in\)  # \(\.\.\. "
                                             r"renamed as above\)'"):  # the graded cells' calls too
        repository.test_nothing_the_new_notebook_frame_marks_for_replacing_is_left(path)
    cells = json.loads(path.read_text())["cells"]
    assert cells[1]["source"] == json.loads(first.read_text())["cells"][1]["source"]  # the Colab cell
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(ROOT / "notebooks" / "ruff.toml"), str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-2000:]
    # marked for nbgrader as the series' notebooks are, each exercise's marks named for it
    marks = [cell["metadata"]["nbgrader"] for cell in cells if "nbgrader" in cell["metadata"]]
    series = [cell["metadata"]["nbgrader"] for cell in json.loads(last.read_text())["cells"]
              if "nbgrader" in cell["metadata"]]
    assert [{**mark, "grade_id": ""} for mark in marks] == [{**mark, "grade_id": ""} for mark in series]
    assert [mark["grade_id"] for mark in marks] == [
        f"nb{number}-exercise{k}-{part}" for k in (1, 2) for part in ("solution", "check")]
