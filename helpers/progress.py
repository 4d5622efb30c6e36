"""Progress bars that read well everywhere (06_gpu_training; helpers.training, .bench and .doctor).

In JupyterLab a bar is a widget while it runs. When it closes, the widget's output is replaced by one
line of text, the bar's final state: that line is what a saved notebook stores, what nbval and
``nbconvert --execute`` see, and what GitHub shows. In a terminal it is tqdm's ordinary text bar.
"""

import importlib.util
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm
from tqdm.notebook import tqdm as notebook_tqdm


def in_notebook() -> bool:
    """True in a Jupyter kernel (JupyterLab, Colab, nbval), False in a terminal or a plain script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


class NotebookBar(notebook_tqdm):
    """tqdm's widget bar, which leaves one line of text (its final state) when it closes."""

    def __init__(self, *args: Any, **kwargs: Any):
        from IPython.display import display

        self.handle = None
        super().__init__(*args, **{**kwargs, "display": False})
        self.handle = None if self.disable else display(self.container, display_id=True)
        self.displayed = True

    def close(self) -> None:
        """End the bar: in JupyterLab the widget gives way to its last line as text (or to nothing)."""
        leave = self.leave and not self.disable and self.handle is not None
        final = self.format_meter(**self.format_dict) if leave else ""
        super().close()
        if self.handle is not None:  # the widget's output becomes its final line, or nothing
            self.handle.update({"text/plain": final}, raw=True)
            self.handle = None


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar: a widget that ends as one line in a notebook, text in a terminal."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:  # widgets need it
        return NotebookBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
