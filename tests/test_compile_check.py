"""tools/compile_check.py, which measures what torch.compile costs and saves for 06's model: its figures,
its record, and 06's model, with a stand-in for the compiler (compiling takes a minute on 2 cores)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import helpers.results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import compile_check  # noqa: E402

PAUSE = 0.6  # seconds the stand-in takes to "compile", on a clock of its own: no real time is measured


class Clock:
    """compile_check's time.perf_counter in these tests: it moves only when the stand-in pauses, so the
    figures do not depend on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowFirstCalls(torch.nn.Module):
    """A stand-in for a compiled model: a pause at its first call in each mode and at each input size."""

    def __init__(self, net: torch.nn.Module, clock: Clock):
        super().__init__()
        self.net, self.clock, self.seen = net, clock, set()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (key := (self.training, images.shape[-2:])) not in self.seen:
            self.seen.add(key)
            self.clock.now += PAUSE
        return self.net(images)


def test_compiling_pays_back_after_the_steps_it_saves_and_never_within_the_noise():
    assert compile_check.steps_to_pay_back(10.0, eager_ms=60.0, compiled_ms=50.0) == 1000
    assert compile_check.steps_to_pay_back(10.0, eager_ms=60.0, compiled_ms=56.9) == 3226  # 5.2 %
    assert compile_check.steps_to_pay_back(10.0, eager_ms=60.0, compiled_ms=57.1) is None  # 4.8 %: drift
    assert compile_check.steps_to_pay_back(10.0, eager_ms=50.0, compiled_ms=60.0) is None  # slower


def test_the_compiling_is_what_first_calls_take_beyond_warm_ones(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(compile_check.time, "perf_counter", clock)
    figures = compile_check.measure(torch.device("cpu"), compile_fn=lambda net: SlowFirstCalls(net, clock),
                                    steps=1)
    assert figures["compiling, in the first training step (s)"] == PAUSE
    evaluation = figures[f"compiling, in the first evaluation at {len(compile_check.SIZES)} image sizes (s)"]
    assert evaluation == pytest.approx(PAUSE * len(compile_check.SIZES))  # eval mode, then each size


def test_a_run_is_recorded_where_06_prints_it_from(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "compile_runs.json"
    path.write_text('{"about": "runs", "runs": {}}\n')
    monkeypatch.setattr(compile_check, "RESULTS", path)
    monkeypatch.setattr(compile_check, "measure", lambda device: {"compiled training step (ms)": 5.0})
    monkeypatch.setattr(compile_check, "compiling_in_a_new_process", lambda device: 2.04)
    compile_check.main(["--device", "cpu", "--record", "here"])
    run = compile_check.main(["--device", "cpu", "--record", "again", "--json", str(tmp_path / "run.json")])
    assert json.loads((tmp_path / "run.json").read_text()) == run  # the run alone, as gpu_run.sh keeps it
    runs = json.loads(path.read_text())["runs"]
    assert list(runs) == ["here", "again"]  # a second run is added beside the first
    assert runs["here"]["figures"] == {"compiled training step (ms)": 5.0,
                                       "compiling in a new process, from the cache of the first (s)": 2.0}
    assert runs["here"]["command"] == "python tools/compile_check.py --device cpu --record here"
    monkeypatch.setattr(helpers.results, "repo_root", lambda: tmp_path)
    capsys.readouterr()
    assert helpers.results.print_run("compile_runs", "here", "new process") == {
        "compiling in a new process, from the cache of the first (s)": 2.0}
    assert "command: python tools/compile_check.py" in capsys.readouterr().out


def test_it_times_the_model_06_trains_and_06_keeps_compile_off_as_the_recorded_run_says():
    model = "UNet(num_classes=len(CLASSES), widths=(16, 32, 64), downscale=4)"
    assert model in (ROOT / "tools" / "compile_check.py").read_text()
    notebook = (ROOT / "notebooks" / "06_gpu_training.ipynb").read_text()
    assert model in notebook and "COMPILE = False" in notebook
    recorded = json.loads((ROOT / "results" / "compile_runs.json").read_text())["runs"]["avx2_cpu"]
    assert recorded["figures"]["training steps until compiling pays back"].startswith("never")


def test_a_run_already_recorded_is_refused_before_anything_is_measured(capsys):
    with pytest.raises(SystemExit):
        compile_check.main(["--record", "avx2_cpu"])  # the run 06 prints
    assert "already holds a run called avx2_cpu" in capsys.readouterr().err
