"""Prose quotes only what is printed: a measured figure in a notebook's markdown must appear in a cell of
that notebook, and the README's measured sections quote only the results files in results/."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
UNIT = (r"%|x\b|×|ms\b|s\b|min\b|seconds?\b|minutes?\b|hours?\b|GB/s|MB/s|[KMG]i?B\b|px\b|epochs?\b|"
        r"steps?\b|workers?\b|times\b|percent\b|images/s\b|images per second|pairs/s\b|samples/s\b")
FIGURE = re.compile(rf"(?<![\w.,/-])(\d{{1,3}}(?:,\d{{3}})+|\d+)(\.\d+)?(?:\s?({UNIT}))?")
# A number right after one of these words is a version, an index or a name, not a measurement.
NOT_MEASURED = re.compile(r"(python|torch|torchvision|torchcodec|pillow|numpy|cuda|jupyterlab|nbval|"
                          r"webdataset|h5py|version|since|notebook|notebooks|cell|issue|step|exercise|rank|node|pep|"
                          r"[<>=]=|v)\s*$", re.I)


def figures(markdown: str) -> set[str]:
    """The measured figures a text quotes, digits only: decimals, and numbers with a unit, % or x."""
    return {number for number, _ in quoted(markdown)}


def quoted(markdown: str) -> set[tuple[str, str | None]]:
    """``figures``, each with its unit (None where it has none)."""
    text = re.sub(r"`[^`]*`", " ", markdown)  # code spans name things
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"\d+(?:\s?x\s?\d+)+", " ", text)  # sizes such as 3 x 224 x 224
    found = set()
    for match in FIGURE.finditer(text):
        whole, decimals, unit = match.group(1), match.group(2), match.group(3)
        if NOT_MEASURED.search(text[max(0, match.start() - 20):match.start()]):
            continue
        number = whole.replace(",", "") + (decimals or "")
        if not decimals and (not unit or (int(number) < 10 and unit not in ("%", "x", "×", "times"))):
            continue  # a count ("3 classes", "2 workers"), not a measurement
        found.add((number, unit))
    return found


# Units a figure must be printed with, rounded to the figure's decimals (another spelling allowed).
PRINTED_AS = {"%": "%", "x": "x|×", "×": "x|×", "ms": r"ms\b", "s": r"s\b|seconds?\b",
              "seconds": r"s\b|seconds?\b", "second": r"s\b|seconds?\b", "min": r"min\b|minutes?\b",
              "minutes": r"min\b|minutes?\b", "GB/s": "GB/s", "MB/s": "MB/s",
              **{size: rf"{size}\b" for size in ("KB", "MB", "GB", "KiB", "MiB", "GiB")}}


def printed(numbers: str, figure: str, unit: str | None = None) -> bool:
    """Whether ``figure`` (digits) occurs in ``numbers`` as a whole number, commas removed; a share (%), a
    ratio (x), a time or a size with its unit, rounded to the figure's decimals: "17 %" is printed by
    "17.2%", not "17.9%" or "17 MB"."""
    numbers = numbers.replace(",", "")
    if unit in PRINTED_AS:
        places = len(figure.partition(".")[2])
        shown = re.findall(rf"(?<![\d.])(\d+(?:\.\d+)?)\s?(?:{PRINTED_AS[unit]})", numbers)
        return any(f"{float(value):.{places}f}" == figure for value in shown)
    return re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", numbers) is not None


def cell_text(cell: dict) -> str:
    """A code cell's source and its text outputs."""
    parts = ["".join(cell["source"])]
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        parts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_figures_find_measurements_and_skip_versions_and_sizes():
    text = ("It took 27 s for a mean IoU of 0.888 (43 %, 2.3x) on torch 2.14.1, at 3 x 224 x 224, 2 workers, "
            "without torchcodec 0.16.")
    assert figures(text) == {"27", "0.888", "43", "2.3"}
    assert figures("3 times faster: 2,900 images/s in 12 seconds, 1.5 GiB") == {"3", "2900", "12", "1.5"}
    assert printed("mean IoU 0.888 in 27 s", "0.888") and not printed("0.8881", "0.888")
    assert printed("waits 17.2% of a step", "17", "%") and not printed("17 epochs, 0.4 %", "17", "%")
    assert printed("17.6 %", "18", "%") and not printed("17.9%", "17", "%") and printed("1.96x", "2.0", "x")
    assert printed("took 12.4 seconds", "12", "s") and not printed("12 workers, 3 s", "12", "s")
    assert printed("shm: 64 MB", "64", "MB") and not printed("64 px in 1 GB", "64", "MB")
    assert quoted("copies 9.5 GB/s") == {("9.5", "GB/s")} and not printed("9.5 GB on disk", "9.5", "GB/s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_prose_quotes_only_figures_its_cells_print(path):
    cells = json.loads(path.read_text())["cells"]
    shown = "\n".join(cell_text(cell) for cell in cells if cell["cell_type"] == "code")
    unprinted = {(index, figure) for index, cell in enumerate(cells) if cell["cell_type"] == "markdown"
                 for figure, unit in quoted("".join(cell["source"])) if not printed(shown, figure, unit)}
    assert not unprinted, f"{path.name}: figures in markdown that no cell prints (cell, figure): " \
                          f"{sorted(unprinted)}. Print them from a cell or a results file."


def readme_section(title: str) -> str:
    """The README's text from the heading ``## {title}`` to the next ``## `` heading."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


@pytest.mark.parametrize("title, files", [
    ("Benchmark", sorted(path.stem for pattern in ("bench_*.json", "stages_*.json")
                         for path in (ROOT / "results").glob(pattern))),
    ("Running on a GPU", ["gpu_training_runs", "compile_runs"]),
])
def test_readme_quotes_only_the_results_files(title, files):
    recorded = "\n".join((ROOT / "results" / f"{name}.json").read_text() for name in files)
    prose = "\n".join(line for line in readme_section(title).splitlines() if not line.startswith("|"))
    missing = sorted(figure for figure in figures(prose) if not printed(recorded, figure))
    assert not missing, f"README '{title}' quotes figures no results file holds: {missing}"


@pytest.mark.parametrize("name, header", [("bench_2core", "| "), ("bench_h100", "| on CUDA |"),
                                          ("bench_h200", "| on CUDA, H200 |")])
def test_readme_benchmark_tables_agree_with_their_results_files(name, header):
    """Each pipeline's row: its images per second at each worker count, then its share of its ceiling.
    A table starts at the row that begins with ``header`` (the first table: the row before its ceiling)."""
    result = json.loads((ROOT / "results" / f"{name}.json").read_text())
    rows = [line for line in readme_section("Benchmark").splitlines() if line.startswith("| ")]
    first = [row.startswith("| ceiling") for row in rows].index(True) - 1
    table = rows[next(i for i, row in enumerate(rows) if i >= first and row.startswith(header)):]
    for pipeline, speeds in result["pipelines"].items():
        row = next(row for row in table if row.startswith(f"| {pipeline} "))
        cells = [cell.strip() for cell in row.split("|")[2:-1]]
        assert cells[:len(speeds)] == [f"{round(speed):,}" for speed in speeds.values()], row
        assert cells[len(speeds)].startswith(f"{round(result['shares'][pipeline] * 100)} % of"), row
        if "formats" in result:  # what each format costs: its disk, and the time to write it
            written = result["formats"][pipeline]
            seconds = f"{written['time to write (s)']} s" if "time to write (s)" in written else ""
            assert cells[len(speeds) + 1:] == [written["disk"], seconds], row
    for ceiling in ("decode only", "memory only", "link only", "gpu decode only"):
        if ceiling not in result["ceilings"]:
            continue
        row = next(row for row in table if row.startswith(f"| ceiling: {ceiling}"))
        assert f"| {round(result['ceilings'][ceiling]):,} |" in row, row
    memory = next(row for row in table if row.startswith("| ceiling: memory only"))
    bandwidths = [f"{result['ceilings']['copy GB/s']:.1f} GB/s"]
    if "host to device GB/s" in result["ceilings"]:
        bandwidths.append(f"{result['ceilings']['host to device GB/s']:.1f} GB/s to the GPU")
    assert memory.startswith(f"| ceiling: memory only ({', '.join(bandwidths)}) |"), memory


def test_every_results_file_names_its_machine_date_versions_and_command():
    for path in sorted((ROOT / "results").glob("*.json")):
        result = json.loads(path.read_text())
        for run in result.get("runs", {"": result}).values():
            described = json.dumps(run)
            assert re.search(r'"date": "20\d\d-\d\d-\d\d"', described), f"{path.name}: no date"
            assert '"torch' in described or "torch 2." in described, f"{path.name}: no versions"
            assert '"command": ' in described and '"machine": ' in described, f"{path.name}"


def test_print_run_prints_the_machine_and_the_figures_asked_for(capsys):
    from helpers.results import print_run

    figures = print_run("gpu_training_runs", "h100", "step (ms)")
    assert figures == {"float32 step (ms)": 6.5, "bfloat16 step (ms)": 7.8, "channels_last step (ms)": 8.4}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("one NVIDIA H100") and lines[1].startswith("  command: jupyter nbconvert")
    assert "  float32 step (ms): 6.5" in lines and "precision" not in "".join(lines)  # h100 names none
    several = print_run("gpu_training_runs", "h100", ("kept", "float32 step"))  # in the record's order
    assert list(several) == ["float32 step (ms)", "kept"]
    with pytest.raises(KeyError, match="no-such-figure"):
        print_run("gpu_training_runs", "h100", "no-such-figure")
    recorded = json.loads((ROOT / "results" / "gpu_training_runs.json").read_text())["runs"]["h100"]
    assert print_run("gpu_training_runs", "h100") == recorded["figures"]  # nothing asked for: all of them
    capsys.readouterr()
    ranges = print_run("gpu_training_runs", "avx2_cpu", "times slower")  # a range, and how it was measured
    printed = capsys.readouterr().out
    assert list(ranges.values()) == [[5, 16]] and ": 5 to 16\n" in printed
    assert "\n  precision: " in printed  # the float type the run timed
    with pytest.raises(FileNotFoundError, match=r"No results file .*no_such_file\.json"):
        print_run("no_such_file", "h100")
