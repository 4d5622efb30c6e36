"""Progress bars: text in a terminal, one final line in a saved notebook (helpers.progress)."""

import json
from pathlib import Path

from tqdm import tqdm

from helpers import progress
from helpers.progress import NotebookBar, in_notebook, progress_bar

TRAINING = Path(__file__).resolve().parent.parent / "notebooks" / "06_gpu_training.ipynb"


def test_outside_a_notebook_the_bar_is_tqdms_text_bar(capsys):
    assert not in_notebook()
    bar = progress_bar(range(3), desc="steps")
    assert type(bar) is tqdm and not isinstance(bar, NotebookBar)
    assert sum(bar) == 3
    assert "steps: 100%" in capsys.readouterr().err


def test_in_a_notebook_without_ipywidgets_the_bar_is_text_not_an_error(monkeypatch):
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    assert type(progress_bar(range(2), disable=True)) is tqdm


def test_in_a_notebook_the_bar_is_a_widget_whose_output_ends_as_its_final_line(monkeypatch):
    import IPython

    class Kernel:  # what get_ipython() returns in a Jupyter kernel
        config = {"IPKernelApp": {}}

    class Handle:  # the displayed widget's output, which close() replaces
        def update(self, data: dict, raw: bool = False) -> None:
            updates.append(data["text/plain"] if raw else None)

    updates, shown = [], []
    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    monkeypatch.setattr("IPython.display.display", lambda *args, **kwargs: shown.append((args, kwargs))
                        or Handle())
    assert in_notebook()
    bar = progress_bar(range(3), desc="epochs")
    assert isinstance(bar, NotebookBar) and sum(bar) == 3
    assert shown == [((bar.container,), {"display_id": True})]  # displayed once, as an updatable output
    assert len(updates) == 1 and updates[0].startswith("epochs: 100%") and "3/3" in updates[0], updates
    assert "\n" not in updates[0]
    assert sum(progress_bar(range(2), leave=False)) == 1 and updates[1:] == [""]  # leaves nothing
    assert sum(progress_bar(range(2), disable=True)) == 1 and len(shown) == 2 and len(updates) == 2


def test_without_ipython_it_is_not_a_notebook(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "IPython", None)  # "import IPython" raises ImportError
    assert not in_notebook()


def test_the_stored_training_run_shows_its_bar_as_one_final_line():
    cells = json.loads(TRAINING.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "progress_bar(range(EPOCHS)" in "".join(c["source"]))
    bars = ["".join(o["data"]["text/plain"]) for o in cell["outputs"] if o["output_type"] == "display_data"]
    assert len(bars) == 1 and bars[0].startswith("epochs: 100%") and "\n" not in bars[0], bars
    assert not [o for o in cell["outputs"] if o.get("name") == "stderr"], "no red text under the cell"
