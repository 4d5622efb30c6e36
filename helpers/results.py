"""Figures measured on other machines, read from the results files in results/ (04_dataloader_batching,
06_gpu_training, 07_distributed).

A run the reader cannot repeat here (a GPU, another CPU) is kept as data: a JSON file naming its machine,
date, versions and command. Notebooks print from these files; prose talks about what is printed.
"""

import json

from helpers.paths import repo_root


def load_results(name: str) -> dict:
    """The results file ``results/<name>.json`` as a dict (04's benchmark table, 06 and 07's runs)."""
    path = repo_root() / "results" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"No results file {path}. The files in results/ come with the repository.")
    return json.loads(path.read_text())


def format_value(value: object) -> str:
    """A recorded figure as text: a pair [low, high] becomes "low to high"."""
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]} to {value[1]}"
    return str(value)


def print_run(name: str, run: str, containing: str | tuple[str, ...] = "") -> dict:
    """Print one recorded run (machine, date, versions, command) and its figures whose names contain
    ``containing`` (or any of several); return those figures."""
    record = load_results(name)["runs"][run]
    print(f"{record['machine']}, {record['date']} ({record['versions']})")
    print(f"  command: {record['command']}")
    if "precision" in record:
        print(f"  precision: {record['precision']}")
    wanted = (containing,) if isinstance(containing, str) else containing
    figures = {key: value for key, value in record["figures"].items() if any(part in key for part in wanted)}
    if not figures:
        raise KeyError(f"No figure named like {containing!r} in run {run!r} of results/{name}.json")
    for key, value in figures.items():
        print(f"  {key}: {format_value(value)}")
    return figures
