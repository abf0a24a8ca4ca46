"""resolve_data_dir: explicit argument, environment variable, default places, clear error."""

from pathlib import Path

import pytest

import bayes_lora
from bayes_lora.data import DATA_DIR_ENV, paths, resolve_data_dir


def test_explicit_argument_wins_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_env_var_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path


def test_default_relative_to_current_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_second_default_is_next_to_repo_root():
    repo_root = Path(bayes_lora.__file__).resolve().parents[1]
    assert paths._candidate_dirs()[1] == repo_root.parent / "shared" / "data"


def test_missing_everywhere_raises_clearly(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    tried = [tmp_path / "nowhere", tmp_path / "nowhere_either"]
    monkeypatch.setattr(paths, "_candidate_dirs", lambda: tried)
    with pytest.raises(FileNotFoundError) as info:
        resolve_data_dir()
    message = str(info.value)
    for place in tried:
        assert str(place) in message
    assert "--data-dir" in message and DATA_DIR_ENV in message
