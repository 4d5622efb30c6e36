"""tools/binder_check.py, which measures the README's notebook table as Binder limits it: a notebook's
peak memory counts every process it starts, and a notebook that fails stops the run, named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only, as Binder")


@pytest.fixture
def binder_check(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "tools"))
    import binder_check

    return binder_check


def notebook(path: Path, source: str) -> Path:
    """A notebook of one code cell."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_memory_of_a_notebook_counts_every_process_below_it(binder_check):
    """PSS summed over the whole tree: a DataLoader worker started by the kernel counts, as on Binder."""
    worker = "import sys; data = b'x' * (300 * 2**20); print('ready', flush=True); sys.stdin.read()"
    kernel = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {worker!r}])"
    nbconvert = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {kernel!r}])"
    launcher = subprocess.Popen([sys.executable, "-c", nbconvert], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline() == "ready\n"  # 300 MiB, every page touched, in the worker
        pss, processes = binder_check.tree_pss(psutil.Process(launcher.pid))
        assert pss >= 300 * 2**20 and processes == 2
    finally:
        launcher.stdin.close()
        launcher.wait()


def test_a_notebook_run_is_named_and_its_peak_counts_the_kernel(binder_check, tmp_path):
    row = binder_check.run_notebook(notebook(tmp_path / "small.ipynb", "data = b'x' * 2**20"), 1, tmp_path)
    assert row["notebook"] == "small" and row["cpus"] == 1
    assert row["peak_pss_gb"] > 0 and row["processes_at_peak"] >= 1  # the kernel, at least


def test_a_notebook_that_fails_stops_the_run_and_is_named(binder_check, tmp_path):
    path = notebook(tmp_path / "fails.ipynb", "raise ValueError('the data is missing')")
    with pytest.raises(SystemExit, match=r"(?s)fails.ipynb failed on 1 CPU\(s\).*the data is missing"):
        binder_check.run_notebook(path, 1, tmp_path)


def test_readme_gets_the_recorded_figures_and_a_row_for_a_new_notebook(binder_check):
    """``--readme`` writes what the README's notebook table quotes, and nothing else: the recorded run
    leaves it as it is; a new run changes its figures, machine, date and versions; a new notebook gets a
    row in its place, its lesson left to write."""
    readme = (binder_check.ROOT / "README.md").read_text()
    recorded = json.loads((binder_check.ROOT / "results" / "binder.json").read_text())
    assert binder_check.write_readme_table(recorded, readme) == readme
    for cores, said in ((2, "on a 2-core"), (8, "on an 8-core"), (18, "on an 18-core"), (16, "on a 16")):
        clause = binder_check.machine_clause({**recorded["machine"], "cores_on_machine": cores})
        assert clause.startswith(said)
    recorded["machine"] |= {"date": "2031-02-03", "python": "3.13.9", "torch": "3.0.1+cpu",
                            "cpu": "Intel Xeon", "gpu": "Tesla T4", "cores_on_machine": 4}
    recorded["notebooks"][1] |= {"seconds": 98.6, "peak_pss_gb": 1.234}
    recorded["notebooks"].insert(2, {"notebook": "01b_more_images", "seconds": 5.0, "peak_pss_gb": 0.5})
    written = binder_check.write_readme_table(recorded, readme).splitlines()
    changed = [line for line in written if line not in readme.splitlines()]
    assert len(changed) == 3 and len(written) == len(readme.splitlines()) + 1, changed
    assert changed[0].startswith("on a 4-core machine (Intel Xeon, Tesla T4; Python 3.13.9, "
                                 "torch 3.0.1+cpu), 2031-02-03 (`results/binder.json`)")
    assert changed[-2].startswith(f"| [{recorded['notebooks'][1]['notebook']}](")
    assert changed[-2].endswith("| 99 s | 1.23 GB |")
    row = written.index(changed[-1])
    assert written[row - 1].startswith("| [01_") and written[row + 1].startswith("| [02_")
    assert changed[-1] == ("| [01b_more_images](notebooks/01b_more_images.ipynb) | (... what you learn) "
                           "| 5 s | 0.50 GB |")
    for name, after in (("00_a_first", "| --- |"), ("01_two_images2", "| [01_two_images]")):  # first, next
        recorded["notebooks"].append({"notebook": name, "seconds": 1.0, "peak_pss_gb": 0.1})
        written = binder_check.write_readme_table(recorded, readme).splitlines()
        row = next(i for i, line in enumerate(written) if line.startswith(f"| [{name}]("))
        assert written[row - 1].startswith(after), (name, written[row - 1])


def test_a_notebook_over_the_series_budget_fails_the_run_and_writes_nothing(binder_check, tmp_path,
                                                                           monkeypatch):
    """The README's table must not quote a run measured on a busy machine: over LIMIT_SECONDS (or
    LIMIT_GB), no JSON."""
    def measured(path, cpus, out):
        seconds = binder_check.LIMIT_SECONDS + (1 if path.stem == "slow" else -1)
        memory = binder_check.LIMIT_GB + (0.01 if path.stem == "heavy" else -0.01)
        return {"notebook": path.stem, "seconds": seconds, "peak_pss_gb": memory, "processes_at_peak": 1}

    monkeypatch.setattr(binder_check, "run_notebook", measured)
    written = tmp_path / "binder.json"
    monkeypatch.setattr(sys, "argv", ["binder_check.py", "fast.ipynb", "slow.ipynb", "--json", str(written)])
    with pytest.raises(SystemExit, match=rf"^over the series' budget: slow OVER {binder_check.LIMIT_SECONDS} "
                       r"s; nothing written\. Was the machine busy\?"):
        binder_check.main()
    assert not written.exists()
    monkeypatch.setattr(sys, "argv", ["binder_check.py", "heavy.ipynb", "--json", str(written)])
    over = rf"^over the series' budget: heavy OVER {binder_check.LIMIT_GB} GB; nothing written"
    with pytest.raises(SystemExit, match=over):
        binder_check.main()
    assert not written.exists()
    monkeypatch.setattr(sys, "argv", ["binder_check.py", "fast.ipynb", "--json", str(written)])
    binder_check.main()
    assert json.loads(written.read_text())["notebooks"][0]["notebook"] == "fast"
