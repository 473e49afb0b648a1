"""Model resolution: a folder inside the model cache is known by its alias's name, so runs given
the alias or the folder's path share calibrations and the shipped length predictor."""

from __future__ import annotations

import shutil

from uellm_cli.engine.models import models_dir, resolve_model


def test_the_converted_folder_of_an_alias_is_named_by_the_alias(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("UELLM_CACHE", str(tmp_path / "cache"))
    folder = models_dir() / "smollm2-135m-converted"
    shutil.copytree(tiny_llama, folder)
    own = models_dir() / "llama-7b"
    shutil.copytree(tiny_llama, own)
    assert resolve_model(str(folder)).name == "smollm2-135m"
    assert resolve_model(str(own)).name == "llama-7b"
    assert resolve_model("llama-7b").path == own.resolve()


def test_other_folders_keep_their_own_name(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("UELLM_CACHE", str(tmp_path / "cache"))
    elsewhere = tmp_path / "smollm2-135m-converted"  # an alias's name, outside the cache
    shutil.copytree(tiny_llama, elsewhere)
    stranger = models_dir() / "my-model"
    shutil.copytree(tiny_llama, stranger)
    assert resolve_model(str(elsewhere)).name == "smollm2-135m-converted"
    assert resolve_model(str(stranger)).name == "my-model"
    assert resolve_model(str(tiny_llama)).name == tiny_llama.name
