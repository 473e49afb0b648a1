"""Shared fixtures: user state under tmp dirs, tiny models built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("COLUMNS", "120")


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory, monkeypatch):
    """Point every piece of user state (history DB, profiles) at a temp dir."""
    home = tmp_path_factory.mktemp("uellm_home")
    monkeypatch.setenv("UELLM_HOME", str(home))
    # The model cache is shared across tests so the default model converts once per machine.
    if "UELLM_CACHE" not in os.environ:
        monkeypatch.setenv("UELLM_CACHE", str(Path.home() / ".cache" / "uellm"))
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="session")
def ref(tiny_llama, tmp_path_factory):
    """One uninterrupted local run of the reference job (proc_helpers), shared by every test
    that compares a killed, resumed or distributed run with it."""
    from proc_helpers import reference_run

    return reference_run(tiny_llama, tmp_path_factory)
