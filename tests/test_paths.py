import re

import pytest

from helpers.paths import ROOT_ENV_VAR, data_dir, repo_root


def test_repo_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOT_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    root = repo_root()
    assert (root / "helpers" / "paths.py").is_file()
    assert data_dir("two_images") == root / "data" / "two_images"
    assert data_dir().is_absolute()


def test_environment_variable_points_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path))
    assert repo_root() == tmp_path.resolve()
    assert data_dir("x.jpg") == tmp_path.resolve() / "data" / "x.jpg"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ROOT_ENV_VAR, ".")  # relative: absolute all the same, wherever the notebook is
    assert data_dir() == tmp_path.resolve() / "data"


def test_a_root_without_data_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path))
    folder = re.escape(str(tmp_path))  # a Windows path: C:\Users\... holds what re reads as escapes
    with pytest.raises(FileNotFoundError, match=f"No data/ folder in {folder}.*{ROOT_ENV_VAR}"):
        repo_root()
