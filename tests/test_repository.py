"""The repository keeps its promises: one package list, one Colab cell, one repository address, small data."""

import ast
import builtins
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from helpers.datasets import CLUTTER

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def requirement_lines(text: str) -> list[str]:
    """Package specifications from requirements.txt: no comments, options or the project itself."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def conda_pip_lines(text: str) -> list[str]:
    """Package specifications under `- pip:` in environment.yml, without pip options."""
    after_pip = text.split("- pip:", 1)[1]
    items = re.findall(r"^\s+-\s+(\S.*)$", after_pip, flags=re.M)
    return [item.strip() for item in items if not item.startswith("-")]


def notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_environment_yml_and_requirements_name_the_same_packages():
    pip = requirement_lines((ROOT / "requirements.txt").read_text())
    conda = conda_pip_lines((ROOT / "environment.yml").read_text())
    assert sorted(pip) == sorted(conda)
    assert "torch==2.14.1" in pip and "torchvision==0.29.1" in pip


def test_parsers_see_a_difference():
    assert requirement_lines("torch==1\n-e .\n# c\nnbval  # x\n") == ["torch==1", "nbval"]
    assert conda_pip_lines("deps:\n  - python\n  - pip:\n      - --extra-index-url u\n      - torch==2\n") \
        == ["torch==2"]


def test_binder_installs_helpers_and_stops_on_errors():
    post_build = (ROOT / "postBuild").read_text().splitlines()
    assert post_build[0].startswith("#!") and "set -e" in post_build[:3]
    assert any("pip install" in line and "-e ." in line for line in post_build)


def test_notebooks_open_on_their_title_then_the_same_short_collapsed_colab_cell():
    assert [p.name for p in NOTEBOOKS][:2] == ["00_start_here.ipynb", "01_two_images.ipynb"]
    for path in NOTEBOOKS:
        title, setup = notebook(path)["cells"][:2]
        assert title["cell_type"] == "markdown" and source(title).startswith("# "), path.name
        assert setup["metadata"]["jupyter"]["source_hidden"] is True, path.name
    colab_cells = {source(notebook(p)["cells"][1]) for p in NOTEBOOKS}
    assert len(colab_cells) == 1, ("the second cell of every notebook is the same Colab cell: copy 00's "
                                   "(tools/new_notebook.py writes it)")
    cell = colab_cells.pop()
    assert '"google.colab" in sys.modules' in cell and len(cell.splitlines()) <= 14
    assert cell.startswith("# On Colab only") and "does nothing" in cell.splitlines()[0]


def colab_cell() -> str:
    return source(notebook(NOTEBOOKS[0])["cells"][1])


def test_colab_cell_does_nothing_and_prints_nothing_elsewhere():
    run = subprocess.run([sys.executable, "-c", colab_cell()], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_colab_cell_clones_and_installs_helpers_without_touching_torch(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args))
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    monkeypatch.setattr(os, "environ", {})
    exec(colab_cell(), {})
    clone, install, lacking = calls  # lacking: the packages of requirements.txt that Colab lacks
    assert clone[:2] == ["git", "clone"] and "--no-deps" in install and "-e" not in install
    assert not any("torch" in arg for arg in install + lacking)
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert sorted(arg for arg in lacking if "==" in arg) == sorted(
        pin for pin in pins if pin.startswith(("webdataset==", "simplejpeg==")))
    assert os.environ["PIXELS_TO_BATCHES_ROOT"] == clone[-1] == install[-1]


def test_the_oldest_versions_pyproject_allows_are_those_the_colab_session_tests():
    """pyproject.toml's floors are Colab's stack (noxfile.py) and what the Colab cell installs."""
    import ast
    import tomllib

    from packaging.version import Version

    noxfile = ast.parse((ROOT / "noxfile.py").read_text())
    stack = next(ast.literal_eval(node.value) for node in noxfile.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COLAB_STACK")
    cell_pins = re.findall(r'"([\w-]+==[\w.]+)"', colab_cell())
    tested = dict(pin.split("==") for pin in stack + cell_pins if "==" in pin)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    for floor in floors:
        name, version = floor.split(">=")
        assert Version(version) == Version(tested[name]), f"{floor}: Colab's is {tested[name]}"
    assert len(floors) == len(tested)  # every package pinned there has its floor (not ipykernel, nbclient)


def test_every_link_names_the_repository_that_pyproject_names():
    run = subprocess.run([sys.executable, "tools/publish.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_publish_points_every_badge_and_colab_cell_at_another_repository():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from publish import read_address, rewritten
    finally:
        sys.path.remove(str(ROOT / "tools"))
    slug, _ = read_address()
    texts = rewritten(ROOT, "teacher/spring-class", "week-3")
    assert len(texts) == 2 + len(NOTEBOOKS)  # pyproject.toml, README.md and every notebook
    readme = texts[ROOT / "README.md"]
    assert "mybinder.org/v2/gh/teacher/spring-class/week-3?" in readme
    assert "colab.research.google.com/github/teacher/spring-class/blob/week-3/notebooks/" in readme
    for path in NOTEBOOKS:
        assert 'REPO, BRANCH, ROOT = \\"teacher/spring-class\\", \\"week-3\\"' in texts[path], path.name
    assert not [path.name for path, text in texts.items() if slug in text], "the old address is left"


def test_readme_open_command_serves_the_repository_and_its_link_opens_00():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^python3 -m venv .* && (\.venv/bin/jupyter lab.*)$", readme, flags=re.M)
    lab = [sys.executable, "-m", "jupyterlab", *command.group(1).split()[2:]]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = subprocess.Popen([*lab, "--no-browser", f"--port={port}", "--allow-root"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        link = next(m.group(0) for line in server.stderr
                    if (m := re.search(rf"http://127\.0\.0\.1:{port}/\S+", line)))
        assert "/lab/tree/notebooks/00_start_here.ipynb?token=" in link
        for _ in range(60):  # the link is printed a moment before the server accepts connections
            try:
                page = urllib.request.urlopen(link, timeout=30)
                break
            except urllib.error.URLError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"nothing answers at {link}")
        assert page.status == 200
        api = link.replace("/lab/tree/notebooks/00_start_here.ipynb", "/api/contents/")
        names = {item["name"] for item in json.load(urllib.request.urlopen(api, timeout=30))["content"]}
        assert {"notebooks", "helpers", "data"} <= names, names
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ruff_finds_nothing_in_helpers_tests_and_notebooks():
    folders = ["helpers", "tests", "tools", "notebooks", "noxfile.py", "conftest.py", "nbgrader_config.py"]
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *folders],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:]


def test_readme_test_command_is_what_ci_runs_with_a_fixed_python():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^python3 (-m venv .*pytest.*)$", readme, flags=re.M).group(1)
    assert f"python3.11 {command}" in (ROOT / ".ci" / "run").read_text()
    assert "for session in colab tests-3.12 tests-3.13; do" in (ROOT / ".ci" / "run").read_text()  # stacks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_one_clean_run(path):
    cells = [c for c in notebook(path)["cells"] if c["cell_type"] == "code" and source(c).strip()]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1)), (
        f"{path.name} was not saved from one run of every cell from a fresh kernel: Restart Kernel and Run "
        "All Cells, then save (or jupyter nbconvert --to notebook --execute --inplace NOTEBOOK)")
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors and notebook(path)["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lessons_have_two_exercises_with_collapsed_solutions(path):
    hidden = [c for c in notebook(path)["cells"] if c["metadata"].get("jupyter", {}).get("source_hidden")]
    solutions = [c for c in hidden if source(c).startswith("### BEGIN SOLUTION")]
    opened = [c["id"] for c in notebook(path)["cells"]
              if source(c).startswith("### BEGIN SOLUTION") and c not in solutions]
    assert not opened, (f"{path.name}: solution cells {opened} are open: collapse them again (in JupyterLab, "
                        "click the blue bar left of the cell), as learners meet them")
    assert len(solutions) == 2, f"{path.name}: two exercises, each with a cell that opens ### BEGIN SOLUTION"
    assert all(c["cell_type"] == "code" for c in hidden), f"{path.name}: only solution cells are collapsed"


def test_two_photographs_are_small_rgb_and_documented():
    documented = (ROOT / "data" / "README.md").read_text()
    photos = sorted(p for p in (ROOT / "data" / "two_images").iterdir() if p.name not in CLUTTER)
    assert [p.name for p in photos] == ["cat.jpg", "coffee.jpg"]
    for path in photos:
        with Image.open(path) as image:
            assert image.mode == "RGB" and max(image.size) <= 512
        assert f"`{path.name}`" in documented


def exercise_checks(nb: dict) -> dict[str, list[tuple[str, str]]]:
    """Per '## Exercise' section, the stored output of each self-check run (``solved = check_...``): on the
    stub (the cell that defines ``check_...`` and runs it) and on the solution (a later cell that runs it).
    Cells that define a part of the check without running it are passed over."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown":
            headings = re.findall(r"^## (.*)$", text, re.MULTILINE)
            if headings:  # the last heading of the cell starts the section that follows
                current = headings[-1] if headings[-1].startswith("Exercise") else None
        elif current and "solved = check_" in text:
            output = "".join("".join(output.get("text", "")) for output in cell.get("outputs", []))
            if "def check_" in text:  # compared by nbval in every run, not only in the stored one
                assert text.startswith("# NBVAL_CHECK_OUTPUT\n"), f"{current}: mark its stub's self-check"
            sections.setdefault(current, []).append(("stub" if "def check_" in text else "solution", output))
    return sections


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_check_says_not_solved_on_its_stub(path):
    """The self-check runs right after the stub in the stored clean run: it must not pass the stub."""
    sections = exercise_checks(notebook(path))
    assert len(sections) == 2, f"{path.name}: expected two exercises, found {list(sections)}"
    for title, runs in sections.items():
        kinds = [kind for kind, _ in runs]
        assert "stub" in kinds and "solution" in kinds, (title, kinds)
        for kind, output in runs:
            assert ("Not solved" if kind == "stub" else "Correct") in output, (
                f"{path.name}, {title}: the self-check run on the {kind} printed {output!r}, not "
                f"{'Not solved' if kind == 'stub' else 'Correct'!r}" + ("" if output else
                " (no output stored: run the notebook from a fresh kernel and save it)"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nothing_the_new_notebook_frame_marks_for_replacing_is_left(path):
    """tools/new_notebook.py marks with "(..." what a lesson replaces: its notes and example exercises, in
    the prose and in code comments (the graded cells' calls)."""
    def marked(line: str, kind: str) -> bool:
        prose = re.sub(r"`[^`]*`", "", line) if kind == "markdown" else line.partition("#")[2]
        return "(... " in prose or "(...)" in prose  # not `f(...)`, nor f(...) in code

    left = [f"cell {index}: {line.strip()}" for index, cell in enumerate(notebook(path)["cells"])
            for line in source(cell).splitlines() if marked(line, cell["cell_type"])]
    assert not left, f"{path.name} still holds what tools/new_notebook.py left to replace: {left}"


def test_the_series_writes_one_vocabulary():
    """One word, "dataset" (as torch names its class), not "data set", in every text a reader sees."""
    texts = {path.name: "".join(source(cell) for cell in notebook(path)["cells"]) for path in NOTEBOOKS}
    for pattern in ["*.md", "*/*.md", "helpers/*.py", "tools/**/*"]:
        texts |= {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in
                  ROOT.glob(pattern) if path.is_file() and path.suffix in {"", ".md", ".py", ".sh"}}
    found = [name for name, text in texts.items() if re.search(r"\bdata\s+sets?\b", text, re.IGNORECASE)]
    assert len(texts) > 40 and not found, f"write 'dataset' for 'data set' in {found}"


def test_each_helper_a_notebook_imports_names_a_notebook_that_teaches_it():
    """A helper's docstring, or its module's, names a notebook that imports it ("04" or
    "04_dataloader_batching"): the back-link from helpers/ to the lesson, as d2l's "Defined in"."""
    importers: dict[tuple[str, str], set[str]] = {}
    for path in NOTEBOOKS:
        for cell in notebook(path)["cells"]:
            text = re.sub(r"^\s*[%!].*$", "", source(cell), flags=re.MULTILINE)  # magics, shell lines
            if cell["cell_type"] != "code" or source(cell).startswith("%%"):  # a script or shell cell
                continue
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers."):
                    for alias in node.names:
                        importers.setdefault((node.module, alias.name), set()).add(path.name[:2])
    unnamed = []
    for (module, name), numbers in sorted(importers.items()):
        tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8"))
        defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        if name not in defined:  # a constant
            continue
        docs = (ast.get_docstring(tree) or "") + (ast.get_docstring(defined[name]) or "")
        if not any(re.search(rf"(?<![\d.]){number}(?!\d)", docs) for number in numbers):
            unnamed.append(f"{module}.{name} (imported by {sorted(numbers)})")
    assert len(importers) > 80 and not unnamed, f"name the notebook that teaches: {unnamed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_imports_each_name_once(path):
    """Imported where first used, and then not again (cells that write a script file are scripts)."""
    first, again = {}, []
    for index, cell in enumerate(notebook(path)["cells"]):
        text = source(cell)
        if cell["cell_type"] != "code" or "%%writefile" in text or "google.colab" in text:
            continue
        imports = r"^\s*(?:from \S+ )?import (\([^)]*\)|[^#\n]+)"  # one line, or a list in brackets
        for names in re.findall(imports, text, flags=re.MULTILINE):
            names = re.sub(r"#[^\n]*", "", names)  # comments inside the brackets
            for name in (n.split(" as ")[-1].strip() for n in names.strip("() \n").split(",") if n.strip()):
                if first.setdefault(name, index) != index:
                    again.append(f"{name} (cells {first[name]} and {index})")
    assert not again, f"{path.name} imports again: {again}"


def names_of(cell_source: str) -> tuple[set[str], set[str]]:
    """The names a code cell defines (assigned, imported, def, class, arguments), and those it reads
    before it defines them (``x.close()`` then ``x = None`` reads x; so does ``x = f(x)``)."""
    tree, where = ast.parse(cell_source), {}  # a Name stored: where it counts as defined
    reads_first = []  # `x += 1` reads x, though its Name is only stored
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            for target in ast.walk(node):  # defined once the value is computed (a walrus: its own)
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    where[target] = (node.end_lineno, node.end_col_offset) if isinstance(
                        node, ast.NamedExpr) else where.get(target, (node.end_lineno, node.end_col_offset))
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                reads_first.append((node.target.id, (node.lineno, node.col_offset)))
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            for generator in node.generators:  # defined before the expression that comes first
                for target in ast.walk(generator.target):
                    where[target] = (node.lineno, node.col_offset)
    never = (1 << 30, 0)
    defined, loads = {}, {}
    for node in ast.walk(tree):
        place = where.get(node, (getattr(node, "lineno", 0), getattr(node, "col_offset", 0)))
        if isinstance(node, ast.Name):
            first = defined if isinstance(node.ctx, ast.Store) else loads
            first[node.id] = min(first.get(node.id, never), place)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                defined[name] = min(defined.get(name, never), place)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.arg | ast.ExceptHandler) and (
                name := node.arg if isinstance(node, ast.arg) else node.name):  # `except E:` names none
            defined[name] = min(defined.get(name, never), place)
    for name, place in reads_first:
        loads[name] = min(loads.get(name, never), place)
    return set(defined), {name for name, place in loads.items() if place < defined.get(name, never)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_an_optional_section_defines_is_not_needed_after_it(path):
    """"A first pass can skip this": the cells after an (optional) section run without its cells."""
    optional, section, from_optional, needed = False, False, {}, []
    for index, cell in enumerate(notebook(path)["cells"]):
        text = source(cell)
        if cell["cell_type"] == "markdown":
            for heading in re.findall(r"^(##+) (.*)$", text, flags=re.MULTILINE):
                if heading[0] == "##":
                    section = optional = "(optional)" in heading[1]
                else:  # a ### heading: optional itself, or inside an optional ## section
                    optional = section or "(optional)" in heading[1]
            continue
        if text.startswith("%%") or "google.colab" in text:
            continue
        defined, read = names_of(text)
        if not optional:
            needed += [f"{name} (cell {index}, from {from_optional[name]})"
                       for name in sorted(read & set(from_optional))]
        for name in defined:
            if optional:
                from_optional.setdefault(name, index)
            else:
                from_optional.pop(name, None)
    assert not needed, f"{path.name}: cells after optional sections need names defined only there: {needed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_name_a_cell_reads_is_defined_by_a_cell_above_it(path):
    """From a fresh kernel, Colab cell not run (it does nothing elsewhere): no cell reads a name that only
    the Colab cell, or a later cell, defines."""
    known = set(dir(builtins)) | {"display", "get_ipython", "In", "Out"}
    unknown = []
    for index, cell in enumerate(notebook(path)["cells"]):
        text = re.sub(r"^\s*[%!].*$", "", source(cell), flags=re.MULTILINE)  # magics, shell lines
        if cell["cell_type"] != "code" or source(cell).startswith("%%") or "google.colab" in text:
            continue
        defined, read = names_of(text)
        unknown += [f"{name} (cell {index})" for name in sorted(read - known)]
        known |= defined
    assert not unknown, f"{path.name}: cells read names no cell above them defines: {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_opens_with_objectives_and_prerequisites_and_ends_with_a_link(path):
    cells = notebook(path)["cells"]
    intro = source(cells[0])
    assert "**You will be able to:**" in intro and "**Prerequisites:**" in intro, (
        f"{path.name}: keep the first cell's lines **You will be able to:** and **Prerequisites:**")
    goals = intro.split("**You will be able to:**")[1].split("**Prerequisites:**")[0]
    count = len(re.findall(r"^- ", goals, re.MULTILINE))
    assert 3 <= count <= 5, f"{path.name}: 3 to 5 objectives under **You will be able to:**, not {count}"
    stems = [p.stem for p in sorted(path.parent.glob("[0-9][0-9]_*.ipynb"))]
    following = stems[stems.index(path.stem) + 1:] or stems[:1]  # the last one leads back to 00
    link = f"[{following[0]}]({following[0]}.ipynb)"
    assert link in source(cells[-1]), f"{path.name} ends with a link to the next notebook, {link}"
    assert ("end of the series" in source(cells[-1])) == (path.stem == stems[-1]), (
        f"{path.name}: only the last notebook ends the series; the others lead on to the next")


def test_the_route_in_00_names_every_notebook_in_order():
    route = next(source(cell) for cell in notebook(NOTEBOOKS[0])["cells"]
                 if source(cell).startswith("## Which notebooks, in which order?"))
    assert re.findall(r"^\| `(\d\d_\w+)` \|", route, re.M) == [p.stem for p in NOTEBOOKS], (
        "00_start_here's table under *Which notebooks, in which order?* lists every notebook, in order")


def test_the_teachers_guide_is_linked_and_lists_every_exercise():
    guide = (ROOT / "TEACHING.md").read_text()
    assert "(TEACHING.md)" in (ROOT / "README.md").read_text()
    times = guide.split("## Class time per notebook")[1].split("\n## ")[0]
    assert re.findall(r"^\| (\d\d) ", times, re.M) == [p.name[:2] for p in NOTEBOOKS], (
        "TEACHING.md's table under *Class time per notebook* has a row for every notebook, in order")
    table = guide.split("## The exercises")[1].split("\n## ")[0]
    rows = {row[0]: row[1:] for row in re.findall(r"^\| (\d\d) \| (.+?) \| (.+?) \|$", table, re.M)}
    for path in NOTEBOOKS:
        names = [title.split(": ", 1)[1] for title in exercise_checks(notebook(path))]
        listed = [cell.removesuffix(" (optional)") for cell in rows.get(path.name[:2], ())]
        assert listed == names, (f"TEACHING.md's table under *The exercises* has no row "
                                 f"| {path.name[:2]} | {' | '.join(names)} | for {path.stem}'s exercises")


def test_the_course_plans_add_up():
    """TEACHING.md's plans are edited by hand: each slot starts where the one before ended, the end row
    sums them, and the two-day course's hours are those of the class times table."""
    guide = (ROOT / "TEACHING.md").read_text()
    plan = guide.split("## A three-hour course")[1].split("\n## ")[0]
    slots = re.findall(r"^\| (\d+):(\d\d) \| (\d+) \|", plan, re.M)
    starts = [60 * int(h) + int(m) for h, m, _ in slots]
    assert starts == [sum(int(n) for *_, n in slots[:i]) for i in range(len(slots))], (
        "TEACHING.md, *A three-hour course*: each slot starts where the one before it ends")
    end = re.search(r"^\| (\d+):(\d\d) \| \*\*(\d+)\*\* \| end \(([\d + ]+)\) \|$", plan, re.M)
    total = sum(int(n) for *_, n in slots)
    assert end and [int(n) for n in end[4].split(" + ")] == [int(n) for *_, n in slots], (
        "TEACHING.md, *A three-hour course*: the end row adds up every slot's minutes")
    assert 60 * int(end[1]) + int(end[2]) == int(end[3]) == total == 180, (
        f"TEACHING.md, *A three-hour course*: the slots take {total} minutes, not 180")
    times = guide.split("## Class time per notebook")[1].split("\n## ")[0]
    minutes = {n: int(m) for n, m in re.findall(r"^\| (\d\d) [^|]+\| (\d+) min \|", times, re.M)}
    assert sorted(minutes) == [path.name[:2] for path in NOTEBOOKS], (
        "TEACHING.md, *Class time per notebook*: every notebook's time written as `| NN name | M min |`")
    days = re.sub(r"\s+", " ", guide.split("## A two-day course")[1].split("\n## ")[0])
    said = {180: "three hours", 255: "four and a quarter"}  # add the words for a new total here
    for first, last in (("00", "03"), ("04", "07")):
        total = sum(m for n, m in minutes.items() if first <= n <= last)
        told = re.search(rf"{first} to {last}( take)? ([^,.]+)", days)  # up to the next comma or full stop
        assert told and told[2] == said.get(total), (
            f"TEACHING.md, *A two-day course*: by the class times, {first} to {last} take {total} minutes")


def test_readme_notebook_table_quotes_the_recorded_one_cpu_run(monkeypatch):
    """The 1-CPU time and peak memory of each notebook come from tools/binder_check.py's results file."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from binder_check import machine_clause

    recorded = json.loads((ROOT / "results" / "binder.json").read_text())
    measure = ("measure every notebook again (python tools/binder_check.py --json results/binder.json "
               "--readme, which writes its figures into the README's notebook table), and run 00 again")
    assert recorded["machine"]["cpus_used"] == 1, measure
    assert [row["notebook"] for row in recorded["notebooks"]] == [p.stem for p in NOTEBOOKS], (
        f"results/binder.json does not hold the notebooks of notebooks/: {measure}")
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The notebooks")[1].split("| notebook |")[0]  # the sentence above the table
    clause = machine_clause(recorded["machine"])  # the machine, its versions and the date
    assert clause in " ".join(table.split()), (
        f"README, above the notebook table, must say {clause!r} (results/binder.json): "
        "write it there, as tools/binder_check.py --readme does")
    lines = readme.splitlines()
    for row in recorded["notebooks"]:
        figures = f"| {row['seconds']:.0f} s | {row['peak_pss_gb']:.2f} GB |"
        line = [line for line in lines if line.startswith(f"| [{row['notebook']}](")] or ["(no row)"]
        assert line[0].endswith(figures), (
            f"README's notebook table: the row of {row['notebook']} must end {figures!r} "
            f"(results/binder.json), not {line[0]!r}")
        assert "(... " not in line[0], f"README's notebook table: write what {row['notebook']} teaches"


PROMISES = {"under half a minute": 30, "under a minute": 60, "about a minute": 90}  # seconds, at most


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_stored_run_took_no_longer_than_the_notebook_promises(path):
    """A stored run slower than the notebook's opening promise was disturbed by other work on its machine,
    and its timings and worker counts say so (the run times cells record; JupyterLab records none unless
    asked, and such a notebook is not judged). The one-CPU figures are binder.json's, in the README."""
    cells = notebook(path)["cells"]
    promise = re.search("|".join(PROMISES), source(cells[0]).replace("\n", " "), re.I)
    assert promise, f"{path.name} opens with how long it runs: one of {list(PROMISES)}"
    times = [cell["metadata"]["execution"] for cell in cells if "execution" in cell["metadata"]]
    if not times:
        pytest.skip(f"{path.name} was saved without the cells' run times")
    seconds = (datetime.fromisoformat(times[-1]["shell.execute_reply"].rstrip("Z"))
               - datetime.fromisoformat(times[0]["iopub.execute_input"].rstrip("Z"))).total_seconds()
    assert seconds <= PROMISES[promise.group(0).lower()], (
        f"{path.name}'s stored run took {seconds:.0f} s, over its promise ({promise.group(0)}): run it again "
        "alone, on a machine doing nothing else (Restart Kernel and Run All Cells), and save it")


def test_teaching_points_to_headings_that_each_occur_once_in_their_notebook():
    """TEACHING.md names sections as `04, *Heading*` or `04: *One*, *Two*`; each must be a heading of that
    notebook, found once (a trailing " (optional)" aside)."""
    text = re.sub(r"\s*\n\s*", " ", (ROOT / "TEACHING.md").read_text())
    pointers = []
    for number, spans in re.findall(r"\b(0\d)(?:'s|,|:) ((?:\*[^*]+\*(?:, | and |; )?)+)", text):
        pointers += [(number, span) for span in re.findall(r"\*([^*]+)\*", spans)]
    assert len(pointers) > 30
    for path in NOTEBOOKS:
        markdown = "\n".join("".join(cell["source"]) for cell in notebook(path)["cells"]
                             if cell["cell_type"] == "markdown")
        markdown = re.sub(r"```.*?```", "", markdown, flags=re.S)  # shell comments are not headings
        titles = [re.sub(r" \(optional\)$", "", title.strip())
                  for title in re.findall(r"^#+ (.*)$", markdown, re.M)]
        for number, span in pointers:
            if path.name.startswith(number):
                assert titles.count(span) == 1, f"TEACHING.md points to {number}, *{span}*: " \
                                                f"{titles.count(span)} headings of {path.name} read so"


def test_a_notebook_runs_as_a_script_where_jupyter_is_missing(tmp_path):
    """tools/notebook_script.py, which tools/gpu_run.sh uses on a machine without Jupyter."""
    def cell(kind: str, source: str) -> dict:
        return {"cell_type": kind, "source": source, "metadata": {}}

    notebook = tmp_path / "lesson.ipynb"
    cells = [cell("markdown", "x = 1"), cell("code", "x = 2"), cell("code", "y = x * 21\ny"),
             cell("code", "print('printed')\nNone"), cell("code", "y;"),
             cell("code", "shares = {('memory', 0): [0.5, None]}\nkept = object()")]
    notebook.write_text(json.dumps({"cells": cells}))
    figures = tmp_path / "figures.json"
    command = [sys.executable, "tools/notebook_script.py", str(notebook), "--figures", str(figures)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    # "y;" prints nothing
    assert run.stdout == "--- cell 1\n--- cell 2\n42\n--- cell 3\nprinted\n--- cell 4\n--- cell 5\n"
    # the plain values, for a results file; not what JSON cannot hold
    assert json.loads(figures.read_text()) == {"after cell": 5, "x": 2, "y": 42,
                                               "shares": {"('memory', 0)": [0.5, None]}}
    notebook.write_text(json.dumps({"cells": [cell("code", "%timeit 1")]}))
    run = subprocess.run([sys.executable, "tools/notebook_script.py", str(notebook)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "cell 1 uses an IPython magic" in run.stderr
