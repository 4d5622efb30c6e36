"""Find the repository and its data folder from any working directory (taught in 00_start_here)."""

import os
from pathlib import Path

ROOT_ENV_VAR = "PIXELS_TO_BATCHES_ROOT"


def repo_root() -> Path:
    """Return the repository root as an absolute path: ``$PIXELS_TO_BATCHES_ROOT`` if set, else the
    folder above helpers/.

    The environment variable serves installs outside the checkout (Colab's setup cell sets it).
    """
    env = os.environ.get(ROOT_ENV_VAR)
    root = Path(env).expanduser().resolve() if env else Path(__file__).resolve().parent.parent
    if not (root / "data").is_dir():
        raise FileNotFoundError(
            f"No data/ folder in {root}. Install helpers from a checkout with `pip install -e .`, "
            f"or set {ROOT_ENV_VAR} to the folder that holds data/ and notebooks/."
        )
    return root


def data_dir(*parts: str) -> Path:
    """Return ``data/`` (or a path inside it, e.g. ``data_dir("two_images")``) as an absolute path."""
    return repo_root().joinpath("data", *parts)
