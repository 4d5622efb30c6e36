"""tools/compile_check.py, which measures what torch.compile costs and saves for 06's model: its figures,
its record, and 06's model, without compiling (that takes most of a minute on a 2-core CPU)."""

import functools
import json
import sys
from pathlib import Path

import helpers.results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import compile_check  # noqa: E402


def test_compiling_pays_back_after_the_steps_it_saves_and_never_within_the_noise():
    assert compile_check.steps_to_pay_back(10.0, eager_ms=60.0, compiled_ms=50.0) == 1000
    assert compile_check.steps_to_pay_back(10.0, eager_ms=60.0, compiled_ms=49.99) == 1000
    assert compile_check.steps_to_pay_back(10.0, eager_ms=50.0, compiled_ms=48.0) is None  # 4 %: drift
    assert compile_check.steps_to_pay_back(10.0, eager_ms=50.0, compiled_ms=60.0) is None  # slower


def test_a_run_is_recorded_where_06_prints_it_from(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "compile_runs.json"
    monkeypatch.setattr(compile_check, "RESULTS", path)
    uncompiled = functools.partial(compile_check.measure, compile_fn=lambda model: model, steps=1)
    monkeypatch.setattr(compile_check, "measure", uncompiled)  # the same steps, nothing compiled
    compile_check.main(["--device", "cpu", "--record", "here"])
    compile_check.main(["--device", "cpu", "--record", "again"])
    runs = json.loads(path.read_text())["runs"]
    assert list(runs) == ["here", "again"]  # a second run is added beside the first
    figures = runs["here"]["figures"]
    assert figures["eager training step (ms)"] > 0 and figures["compiled training step (ms)"] > 0
    assert "training steps until compiling pays back" in figures
    assert runs["here"]["command"] == "python tools/compile_check.py --device cpu --record here"
    monkeypatch.setattr(helpers.results, "repo_root", lambda: tmp_path)
    capsys.readouterr()
    assert helpers.results.print_run("compile_runs", "here", "training step") == {
        key: value for key, value in figures.items() if "training step" in key}
    assert "command: python tools/compile_check.py" in capsys.readouterr().out


def test_it_times_the_model_06_trains():
    model = "UNet(num_classes=len(CLASSES), widths=(16, 32, 64), downscale=4)"
    assert model in (ROOT / "tools" / "compile_check.py").read_text()
    assert model in (ROOT / "notebooks" / "06_gpu_training.ipynb").read_text()
