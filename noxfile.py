"""Test sessions for the stacks learners use (README, "Tested stacks"). Run with nox:

    nox -s tests-3.13     # the README's test command on Python 3.13 (also tests-3.11, tests-3.12)
    nox -s colab          # every notebook on Colab's stack, through its own Colab cell
    nox -s mutation       # mutation testing of the helpers (not by default: ~65 min on 2 cores)

Each session makes its own virtual environment under .nox/ with the Python it names, found on PATH as
python3.11, python3.12 or python3.13. `.ci/run` runs the README's test command, then `colab`,
`tests-3.12` and `tests-3.13`.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests-3.13", "colab"]

# Google Colab's runtime of August 2026: the oldest stack helpers/ supports (pyproject.toml's floor).
# No simplejpeg, webdataset or nbgrader there; each notebook's Colab cell installs the first two.
COLAB_STACK = ["torch==2.11.0", "torchvision==0.26.0", "pillow==11.3.0", "numpy==2.1.3",
               "matplotlib==3.10.0", "h5py==3.16.0", "tqdm==4.67.1", "psutil==5.9.5",
               "ipywidgets==7.7.1", "ipykernel", "nbclient"]
# Also on Colab, and too old for helpers.gpu_decode (decode_jpeg came in torchcodec 0.16): with it, 06 says
# why (c) does not run and prints the command that installs a newer build.
COLAB_TOO_OLD = ["torchcodec==0.11.0"]


@nox.session(python=["3.11", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    """The README's test command, with the pinned stack: unit tests, then every notebook (nbval)."""
    session.install("-r", "requirements-teacher.txt")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.13")
def colab(session: nox.Session) -> None:
    """Every notebook on Colab's stack, as Colab runs it: from outside the repository, through its
    own Colab cell (which installs helpers/ from a copy of this checkout)."""
    session.install(*COLAB_STACK, *COLAB_TOO_OLD)
    session.run("python", "tools/colab/run.py", *session.posargs)


@nox.session(python="3.13", default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing with the pinned mutmut: every small change to the helpers listed in [tool.mutmut]
    of pyproject.toml (the data path from file to batch, and the helpers around it) should fail a unit test.
    Prints the survivors (``mutmut show NAME`` shows one). ``nox -s mutation -- "helpers.batching*"`` runs
    the mutants of one module. Results are kept in mutants/: a second run tests only the functions that
    changed, and names given after -- again; delete mutants/ for a fresh run after changing tests."""
    session.install("-r", "requirements-teacher.txt")
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one per mutant: two run side by side
    session.run("mutmut", "run", "--max-children", "2", *session.posargs, env=threads)
    session.run("mutmut", "results", env=threads)
