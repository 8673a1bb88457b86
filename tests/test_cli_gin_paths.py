"""Gin file lookup of the entry points and benchmarks: search path, include noise, real misses."""

from __future__ import annotations

import logging
import pathlib
import sys

import pytest

import gin
from t5x_ext.launch import flags as cli
from tests.conftest import REPO_ROOT


def test_search_path_is_the_source_trees_gin_in_a_checkout():
  # Editable install / checkout: the top-level gin/ (never gin-config's package next to an
  # installed t5x_ext; tests/test_install_wheel.py covers the wheel).
  assert cli.gin_search_paths() == [str(REPO_ROOT / "gin")]


def test_includes_resolve_from_any_directory_without_path_not_found_noise(
  tmp_path, monkeypatch, caplog
):
  monkeypatch.chdir(tmp_path)
  with caplog.at_level(logging.INFO):
    cli.parse_gin(["local/ul2_tiny.gin"], ["TRAIN_STEPS = 2", "MODEL_DIR = '/tmp/x'"])
  assert cli.macro_value("TRAIN_STEPS") == 2
  assert not [r for r in caplog.records if "Path not found" in r.getMessage()]


def test_a_missing_include_still_fails_and_is_logged(tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "bad.gin").write_text("include 'models/t5_1_1/no_such_size.gin'\n")
  with caplog.at_level(logging.INFO), pytest.raises(OSError, match="no_such_size.gin"):
    cli.parse_gin(["bad.gin"])
  assert any("no_such_size.gin" in r.getMessage() for r in caplog.records)


def test_a_missing_gin_file_names_the_flag(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError, match="--gin_file='models/nope.gin'"):
    cli.parse_gin(["models/nope.gin"])


def test_benchmarks_load_models_like_the_entry_points(tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(pathlib.Path(REPO_ROOT, "bench")))
  sys.modules.pop("_common", None)
  import _common

  with caplog.at_level(logging.INFO):
    model = _common.load_gin_model(
      ["models/t5_1_1/small.gin"], ["network.TransformerConfig.dtype='float32'"]
    )
  assert model.config.emb_dim == 512 and model.config.dtype == "float32"
  assert not [r for r in caplog.records if "Path not found" in r.getMessage()]
  gin.clear_config()
  with pytest.raises(FileNotFoundError):
    _common.load_gin_model(["models/t5_1_1/none.gin"], [])
