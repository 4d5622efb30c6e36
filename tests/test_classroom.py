"""A class's copies: nbgrader turns the notebooks into student versions and grades them (TEACHING.md)."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FIRST = NOTEBOOKS[0].name  # 00_start_here: the first lesson, quick to run, with two exercises as all have


def nbgrader(course: Path, *args: str) -> None:
    # nbgrader creates its gradebook with the `alembic` command: the environment's bin/ must be on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True,
                         text=True, env={**os.environ, "PATH": path})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A copy of the repository's notebooks and nbgrader settings, with the student versions made."""
    course = tmp_path_factory.mktemp("course")
    (course / "notebooks").mkdir()
    for path in NOTEBOOKS:  # the notebooks alone: no other file makes classroom/ before the gradebook
        shutil.copy(path, course / "notebooks")
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copy(ROOT / "notebooks" / "ruff.toml", course / "notebooks")  # lint files: none for students
    (course / "notebooks" / ".ruff_cache").mkdir()
    (course / "notebooks" / ".ruff_cache" / "CACHEDIR.TAG").write_text("ruff's")  # nbgrader copies files
    nbgrader(course, "generate_assignment", "notebooks")
    return course


def test_autograding_gives_each_cell_the_time_the_test_command_gives_it(tmp_path, monkeypatch):
    """nbgrader's own limit, 30 s a cell, would interrupt 06's training on a slow machine."""
    from traitlets.config import PyFileConfigLoader

    monkeypatch.chdir(tmp_path)  # the settings make classroom/ where they are read
    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"--nbval-cell-timeout={config.Execute.timeout}" in pyproject


def solution_lines(cell: nbformat.NotebookNode) -> list[str]:
    region = re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, flags=re.S)
    return [line for line in region.group(1).splitlines() if line.strip()] if region else []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_versions_keep_the_exercises_and_lose_the_solutions(course, path):
    teacher = nbformat.read(path, as_version=4)
    student = nbformat.read(course / "classroom" / "release" / "notebooks" / path.name, as_version=4)
    text = "\n".join(cell.source for cell in student.cells)
    solutions = [cell for cell in teacher.cells if solution_lines(cell)]
    assert len(solutions) == 2, f"{path.name}: two exercises, each with a hidden solution"
    elsewhere = "\n".join(cell.source for cell in teacher.cells if not solution_lines(cell))
    for cell in solutions:  # the lines only a solution has (a stub may share its def line)
        own = [line.strip() for line in solution_lines(cell) if line.strip() not in elsewhere]
        assert own and not [line for line in own if line in text], f"{path.name}: a solution is left"
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "assert solved" not in text
    released = {p.name for p in (course / "classroom" / "release" / "notebooks").iterdir()}
    assert not {"ruff.toml", ".ruff_cache"} & released, "lint settings are no files for students"
    kept = [cell.source for cell in teacher.cells if "nbgrader" not in cell.metadata]
    assert all(source in text for source in kept), "every other cell, the stubs too, stays unchanged"


def test_autograding_scores_the_solved_exercise_and_fails_the_hidden_check_of_the_other(course):
    """One submission, for one notebook run: the student copy with Exercise 1 solved and Exercise 2 left
    as given. It runs without errors up to the graded cells; autograding restores their hidden
    `assert solved`, which fails for Exercise 2 only, and scores the solved one."""
    teacher = nbformat.read(course / "notebooks" / FIRST, as_version=4)
    student = nbformat.read(course / "classroom" / "release" / "notebooks" / FIRST, as_version=4)
    solution = next(cell for cell in teacher.cells if solution_lines(cell))  # Exercise 1's
    stub = next(cell for cell in student.cells
                if cell.metadata.get("nbgrader", {}).get("grade_id") == solution.metadata.nbgrader.grade_id)
    assert "The solution is not in this copy" in stub.source
    stub.source = "\n".join(line for line in solution.source.splitlines()
                            if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))  # as a student writes it
    submitted = course / "classroom" / "submitted" / "student" / "notebooks"
    submitted.mkdir(parents=True)
    nbformat.write(student, submitted / FIRST)
    nbgrader(course, "autograde", "notebooks")
    with Gradebook(f"sqlite:///{course / 'classroom' / 'gradebook.db'}") as gradebook:
        graded = gradebook.find_submission_notebook(Path(FIRST).stem, "notebooks", "student")
        assert (graded.score, graded.max_score) == (1, 2)
    graded = nbformat.read(course / "classroom" / "autograded" / "student" / "notebooks" / FIRST,
                           as_version=4)
    failed = [cell for cell in graded.cells if cell.cell_type == "code"
              and any(output.output_type == "error" for output in cell.outputs)]
    assert [cell.metadata["nbgrader"]["grade_id"] for cell in failed] == ["nb00-exercise2-check"]
    outputs = "".join(output.get("text", "") for cell in graded.cells if cell.cell_type == "code"
                      for output in cell.outputs)
    # each exercise checks twice: under its self-check heading, on the stub (the solution cell comes
    # after it), then in the graded cell, after the solution: solved there for Exercise 1 only
    assert outputs.count("Not solved yet") == 3 and outputs.count("Correct") == 1
    nbgrader(course, "export")  # into classroom/, which git ignores: never grades.csv beside README.md
    assert (course / "classroom" / "grades.csv").read_text().count("\nnotebooks,") == 1
    assert not (course / "grades.csv").exists()


def names(sources: list[str]) -> tuple[set[str], set[str]]:
    """The names that cells bind anywhere (assigned, imported, defined, caught) and those they read. IPython
    turns each cell into Python first (a %%writefile cell's body becomes a string, as it runs)."""
    bound, read = set(), set()
    for source in sources:
        for node in ast.walk(ast.parse(TransformerManager().transform_cell(source))):
            if isinstance(node, ast.Name):
                (bound if isinstance(node.ctx, ast.Store) else read).add(node.id)
            elif isinstance(node, ast.alias):  # import a.b binds a
                bound.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:  # except Error as name
                bound.add(node.name)
    return bound, read


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_versions_read_no_name_that_only_a_solution_defines(course, path):
    """A student copy runs top to bottom with its solutions left out: a later cell that reads a name only
    a solution defines would stop it with a NameError (autograding runs only 00's copy)."""
    teacher = nbformat.read(path, as_version=4)
    student = nbformat.read(course / "classroom" / "release" / "notebooks" / path.name, as_version=4)
    code = [cell.source for cell in student.cells if cell.cell_type == "code"]
    in_solutions, _ = names([cell.source for cell in teacher.cells if solution_lines(cell)])
    bound, read = names(code)
    assert not (in_solutions - bound) & read, (
        f"{path.name}: the student copy reads {sorted((in_solutions - bound) & read)}, which only a "
        "solution defines: define it in the stub or the cell before the exercise")
