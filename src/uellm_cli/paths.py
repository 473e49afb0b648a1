"""Where user state lives. One env var moves each, so tests (and users) can relocate them."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """History DB, stored profiles and calibrations: $UELLM_HOME or ~/.local/share/uellm."""
    env = os.environ.get("UELLM_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "uellm"


def cache_dir() -> Path:
    """Converted models and fitted predictors: $UELLM_CACHE or ~/.cache/uellm."""
    env = os.environ.get("UELLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "uellm"
