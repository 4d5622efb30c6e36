"""Make results files from what tools/gpu_run.sh wrote, so that no figure of a GPU run is retyped.

    python tools/record_gpu_run.py NAME OUT [OUT ...]      # e.g. NAME=h100_2, one OUT per gpu_run.sh call

NAME must be new: 06, the README and tests/test_prose.py read the runs already recorded (h100, h200),
and a new run under their name would change what they check. --replace overwrites one on purpose.

From the folders OUT (whichever of these files they hold):
  bench_cuda.json     copied as results/bench_NAME.json (it already names its command, date and GPU)
  bench_stages.json   copied as results/stages_NAME.json (tools/feed_stages.py: each stage's time)
  machine.txt         the machine, date and versions of the run
  06_figures.json     06's values (tools/notebook_script.py --figures): the run NAME in
                      results/gpu_training_runs.json, with its step times, what it kept, the waiting
                      shares and the three ways to feed the device (and the cell it stopped after,
                      where a time limit stopped it)
  rank-*.json         the nccl launch of helpers.ddp_train, added to the same run
  compile_check.json  tools/compile_check.py's run (gpu_run.sh's step compile): the run NAME in
                      results/compile_runs.json
06 prints the run with helpers.results.print_run("gpu_training_runs", NAME); the README quotes it.
"""

import argparse
import json
import re
import shutil
from pathlib import Path

from notebook_script import code_cells

RESULTS = Path(__file__).resolve().parent.parent / "results"
LESSON = RESULTS.parent / "notebooks" / "06_gpu_training.ipynb"
COPIED = {"bench_cuda.json": "bench_{}.json", "bench_stages.json": "stages_{}.json"}  # OUT's, as results'
RUNS = ("gpu_training_runs.json", "compile_runs.json")  # results files of runs by name


def machine(folder: Path) -> dict[str, str]:
    """machine, date and versions from OUT/machine.txt."""
    lines = dict(line.split(": ", 1) for line in (folder / "machine.txt").read_text().splitlines()
                 if re.match(r"(date|gpu|cpu): ", line))
    versions = next(line for line in (folder / "machine.txt").read_text().splitlines()
                    if line.startswith("python "))
    gpu = lines.get("gpu", "no GPU found").split(",")[0].strip()
    return {"machine": f"one {gpu}, {lines['cpu']} host", "date": lines["date"][:10],
            "versions": versions.replace(" | ", ", ")}


def lesson_figures(values: dict) -> dict[str, object]:
    """06's figures by name, from the values its cells computed."""
    figures: dict[str, object] = {}
    for key, ms in values.get("timings", {}).items():  # "(None, False)": float32, contiguous
        amp, layout = key.strip("()").split(", ")
        precision = "float32" if amp == "None" else amp.removeprefix("torch.")
        layout = "channels_last" if layout == "True" else "contiguous"
        figures[f"{precision} {layout} step (ms)"] = round(ms, 1)
    if "CHANNELS_LAST" in values:
        figures["kept"] = (f"{(values['AMP'] or 'float32').removeprefix('torch.')}, "
                           f"{'channels_last' if values['CHANNELS_LAST'] else 'contiguous'}, "
                           f"{values['WORKERS']} loader workers")
    if "train_seconds" in values:
        figures[f"{values['EPOCHS']} epochs, validation included (s)"] = round(values["train_seconds"], 1)
    if "val_miou" in values:
        figures["mean IoU over objects"] = round(values["val_miou"], 3)
    for key, measured in values.get("shares", {}).items():  # "('files', 0)": [share, images/s]
        source, workers = re.match(r"\('(\w+)', (\d+)\)", key).groups()
        source = "samples in memory" if source == "memory" else source
        loaders = "main process" if workers == "0" else f"{workers} workers"
        share, speed = measured if isinstance(measured, list) else (measured, None)
        figures[f"waiting for data, {source}, {loaders} (%)"] = round(share * 100)
        if speed is not None:
            figures[f"images trained per second, {source}, {loaders}"] = round(speed)
    for way, (share, speed) in values.get("fed", {}).items():  # "(b) resident": [share, images/s]
        figures[f"{way}: waiting for data (%)"] = round(share * 100, 1)
        figures[f"{way}: images trained per second"] = round(speed)
    for memory, ms in values.get("copy_ms", {}).items():
        figures[f"one uint8 batch to the GPU from {memory} memory (ms)"] = round(ms, 3)
    return figures


def launch_figures(folder: Path) -> dict[str, object]:
    """The nccl launch's figures, from the ranks' rank-R.json."""
    ranks = sorted((json.loads(path.read_text()) for path in folder.glob("rank-*.json")),
                   key=lambda log: log["rank"])
    if not ranks:
        return {}
    first, launch = ranks[0], "helpers.ddp_train"
    return {f"{launch} launch": f"{first['world_size']} ranks, {first['backend']} on {first['device']}",
            f"{launch} steps per epoch, rank by rank": [[e["steps"] for e in r["epochs"]] for r in ranks],
            f"{launch} seconds (rank 0)": round(first["seconds"], 1),
            f"{launch} mean IoU after its epochs": round(first["eval"]["mean_iou"], 3),
            f"{launch} checkpoint the same on every rank": all(r["checkpoint_matches"] for r in ranks)}


def dumps(data: dict) -> str:
    """JSON as the results files keep it: indented, with short lists of numbers on one line."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    one_line = lambda match: "[" + re.sub(r",\s+", ", ", match.group(1)) + "]"  # noqa: E731
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", one_line, text) + "\n"


def add_run(path: Path, name: str, run: dict) -> None:
    """Add (or replace) the run ``name`` of the results file ``path``; its other runs stay as they are."""
    runs = json.loads(path.read_text())
    runs["runs"][name] = run
    path.write_text(dumps(runs))


def recorded_as(name: str, results: Path) -> list[str]:
    """The results files in ``results`` that already hold a run called ``name``."""
    found = [kept.format(name) for kept in COPIED.values() if (results / kept.format(name)).is_file()]
    for file in RUNS:
        if (results / file).is_file() and name in json.loads((results / file).read_text())["runs"]:
            found.append(file)
    return found


def record(name: str, folders: list[Path], results: Path = RESULTS, replace: bool = False) -> dict:
    """Write results/bench_NAME.json, results/stages_NAME.json and the run NAME of
    results/gpu_training_runs.json (and of results/compile_runs.json); return the run of 06. A NAME
    already recorded is refused unless ``replace``."""
    if not replace and (found := recorded_as(name, results)):
        raise SystemExit(f"A run called {name} is already in {', '.join(found)}, which 06, the README and "
                         f"the tests read: record this one under a new name (such as {name}_2), or pass "
                         "--replace to overwrite it, then update what reads it.")
    run: dict = {"figures": {}}
    compiled = copied = False
    for folder in folders:
        for written, kept in COPIED.items():
            if (folder / written).is_file():  # already results files: command, date, machine
                shutil.copyfile(folder / written, results / kept.format(name))
                copied = True
        if (folder / "machine.txt").is_file():
            run = {**machine(folder), **run}
        if (folder / "06_figures.json").is_file():
            values = json.loads((folder / "06_figures.json").read_text())
            run["figures"] |= lesson_figures(values)
            cells = len(code_cells(LESSON))
            if values.get("after cell", cells) < cells:  # stopped by its time limit: said beside its figures
                run["figures"]["06 stopped after code cell"] = f"{values['after cell']} of {cells}"
        run["figures"] |= launch_figures(folder)
        if (folder / "compile_check.json").is_file():  # tools/compile_check.py --json: one run
            measured = json.loads((folder / "compile_check.json").read_text())
            if (folder / "machine.txt").is_file():  # described as the run of 06 is
                measured |= machine(folder)
            add_run(results / "compile_runs.json", name, measured)
            compiled = True
    if not run["figures"]:
        if compiled or copied:  # a run whose 06 and launch did not finish: its benchmark, recorded
            return {}
        raise SystemExit(f"No bench_cuda.json, bench_stages.json, 06_figures.json, rank-*.json or "
                         f"compile_check.json in {' '.join(map(str, folders))}: nothing to record.")
    run["command"] = ("bash tools/gpu_run.sh OUT: 06 as tools/notebook_script.py "
                      "notebooks/06_gpu_training.ipynb --figures, and torch.distributed.run -m "
                      "helpers.ddp_train --sync-bn on nccl")
    run = {key: run[key] for key in ("machine", "date", "versions", "command", "figures")}
    add_run(results / "gpu_training_runs.json", name, run)
    return run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("folders", nargs="+", type=Path, metavar="OUT")
    parser.add_argument("--replace", action="store_true", help="overwrite a run of the same name")
    args = parser.parse_args()
    print(json.dumps(record(args.name, args.folders, replace=args.replace), indent=1))
