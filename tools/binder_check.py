"""Run notebooks as Binder runs them, and measure what Binder limits: time on one CPU and peak memory.

mybinder.org gives a session 1 CPU and a 2 GB memory limit (1 GB guaranteed). This executes each
notebook from a fresh kernel with ``jupyter nbconvert --execute``, pinned to ``--cpus`` cores, and every
20 ms adds up the proportional set size (PSS: shared pages divided among the processes sharing them, so
the sum counts each page once, as the memory limit does; the limit also counts the page cache, which
this leaves out) of the kernel and every process it starts: DataLoader workers, torchrun and its ranks.
It prints one row per notebook and writes the figures to ``--json``, unless one went over the series'
budget, LIMIT_GB or LIMIT_SECONDS (the README promises about a minute; a busy machine doubles the times).

    python tools/binder_check.py                          # every notebook, 1 CPU
    python tools/binder_check.py notebooks/07_distributed.ipynb --cpus 2

The executed copies go to a temporary folder; the repository's notebooks are not changed. It runs on
Linux only, as Binder does. ``--json`` keeps one run of every notebook together: the README's notebook
table and 00 quote it, so after adding a notebook measure them all again. ``--readme`` then writes the
figures, date and versions into that table (a notebook without a row gets one, its lesson left to write).

    python tools/binder_check.py --json results/binder.json --readme
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LIMIT_GB = 1.5  # the series' budget: well inside Binder's 2 GB, near its guaranteed 1 GB
LIMIT_SECONDS = 90  # the series' promise, about a minute a notebook on one CPU (README, TEACHING.md)


def cpu_name() -> str:
    """The CPU's model name, as Linux gives it in /proc/cpuinfo (Binder runs Linux), else its architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def tree_pss(launcher: psutil.Process) -> tuple[int, int]:
    """PSS in bytes of every process below ``launcher`` (the kernel and what it started), and their count."""
    total = count = 0
    for process in launcher.children(recursive=True):
        try:
            total += process.memory_full_info().pss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass  # a worker that ended between the listing and the reading
    return total, count


def run_notebook(path: Path, cpus: int, out: Path) -> dict:
    """Execute one notebook on the first ``cpus`` usable cores; return its time and peak memory."""
    cores = sorted(os.sched_getaffinity(0))[:cpus]
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=600", "--output-dir", str(out), str(path)]
    start = time.perf_counter()
    run = subprocess.Popen(command, cwd=path.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(run.stderr), daemon=True)
    reader.start()
    launcher, peak, peak_processes = psutil.Process(run.pid), 0, 0
    while run.poll() is None:
        pss, processes = tree_pss(launcher)
        if pss > peak:
            peak, peak_processes = pss, processes
        time.sleep(0.02)
    reader.join()
    if run.returncode != 0:
        raise SystemExit(f"{path.name} failed on {cpus} CPU(s):\n" + "".join(stderr[-40:]))
    return {"notebook": path.stem, "cpus": cpus, "seconds": round(time.perf_counter() - start, 1),
            "peak_pss_gb": round(peak / 1e9, 2), "processes_at_peak": peak_processes}


def machine_clause(machine: dict) -> str:
    """The README's words for the machine of a run (``--json``'s "machine"), above its notebook table."""
    gpu, cores = machine.get("gpu") or "no GPU", machine["cores_on_machine"]  # no "gpu" before 2026-12-07
    article = "an" if re.match(r"8|1[18]$", str(cores)) else "a"  # an 8-core, an 11-core, an 18-core
    return (f"on {article} {cores}-core machine ({machine['cpu']}, {gpu}; Python "
            f"{machine['python']}, torch {machine['torch']}), {machine['date']} (`results/binder.json`)")


def write_readme_table(recorded: dict, readme: str) -> str:
    """``readme`` with ``recorded`` (a ``--json`` file's figures) in its notebook table: each row's time
    and peak memory, the machine, date and versions in the sentence above the table, and a row for a
    notebook that has none, after the row before it, its lesson marked "(..." to write."""
    head, table = readme.split("| notebook |", 1)
    head, _, intro = head.rpartition("## The notebooks")
    clause = machine_clause(recorded["machine"])
    intro = re.sub(r"on an? \d+-core .*?\(`results/binder\.json`\)", lambda _: clause, intro, count=1,
                   flags=re.S)  # the machine's clause, across line breaks
    table, blank, rest = table.partition("\n\n")  # the table ends at its first blank line
    lines = table.split("\n")
    for row in recorded["notebooks"]:
        name, figures = row["notebook"], f"| {row['seconds']:.0f} s | {row['peak_pss_gb']:.2f} GB |"
        found = [i for i, line in enumerate(lines) if line.startswith(f"| [{name}](")]
        if found:
            lines[found[0]] = re.sub(r"\| [^|]* \| [^|]* \|$", figures, lines[found[0]])
        else:
            last = max((i for i, line in enumerate(lines)  # after the row before it by name, or the head
                        if line.startswith("| [") and line[3:line.index("]")] < name), default=1)
            lines.insert(last + 1, f"| [{name}](notebooks/{name}.ipynb) | (... what you learn) {figures}")
    return head + "## The notebooks" + intro + "| notebook |" + "\n".join(lines) + blank + rest


def over_budget(row: dict) -> list[str]:
    """What a notebook's run went over: the series' memory budget, its time (the README's minute)."""
    over = [f"OVER {LIMIT_GB} GB"] if row["peak_pss_gb"] > LIMIT_GB else []
    return over + ([f"OVER {LIMIT_SECONDS} s"] if row["seconds"] > LIMIT_SECONDS else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--cpus", type=int, default=1, help="cores to pin the kernel to (Binder: 1)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--readme", action="store_true", help="write them into README.md's notebook table")
    args = parser.parse_args()
    if args.readme and not (args.json and args.cpus == 1 and len(args.notebooks) == len(NOTEBOOKS)):
        raise SystemExit("--readme writes one run of every notebook on 1 CPU: add --json results/binder.json "
                         "and name no notebooks")
    if not hasattr(os, "sched_getaffinity"):  # and PSS: Linux's own measure
        raise SystemExit("binder_check needs Linux, as Binder runs: open a terminal in a Binder session "
                         "(File > New > Terminal) or use another Linux machine, and run it there")
    rows = []
    with tempfile.TemporaryDirectory(prefix="binder_check_") as out:
        for path in args.notebooks:
            rows.append(run_notebook(path.resolve(), args.cpus, Path(out)))
            row = rows[-1]
            verdict = ", ".join(over_budget(row)) or "ok"
            processes = f"{row['processes_at_peak']} process{'es' if row['processes_at_peak'] > 1 else ''}"
            print(f"{row['notebook']:<24} {row['seconds']:6.1f} s  {row['peak_pss_gb']:.2f} GB "
                  f"({processes})  {verdict}", flush=True)
    if over := [f"{row['notebook']} {', '.join(over_budget(row))}" for row in rows if over_budget(row)]:
        unwritten = "; nothing written" if args.json else ""
        raise SystemExit(f"over the series' budget: {'; '.join(over)}{unwritten}. Was the machine busy? "
                         "Measure again on an idle one; else make the notebook lighter or faster.")
    if args.json:
        import torch  # the versions measured, read after the runs so they do not count
        machine = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
                   "torch": torch.__version__, "cpu": cpu_name(),
                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                   "cores_on_machine": os.cpu_count(), "cpus_used": args.cpus,
                   "command": "python tools/binder_check.py " + " ".join(sys.argv[1:])}
        args.json.write_text(json.dumps({"machine": machine, "notebooks": rows}, indent=1) + "\n")
        if args.readme:
            readme = ROOT / "README.md"
            readme.write_text(write_readme_table({"machine": machine, "notebooks": rows}, readme.read_text()))
            print(f"{readme}: figures written; check the machine named above the notebook table")


if __name__ == "__main__":
    main()
