"""RunConfig: validation, and which options enter the resume fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from uellm_cli.config import RunConfig
from uellm_cli.errors import ConfigError


def _cfg(**kw) -> RunConfig:
    return RunConfig(job=Path("j.jsonl"), out=Path("o"), **kw)


def test_options_that_change_outputs_are_in_the_fingerprint():
    base = _cfg().output_options()
    assert _cfg(max_new_tokens=10).output_options() != base
    assert _cfg(engine="vllm").output_options()["engine"] == "vllm"


def test_options_that_do_not_change_outputs_are_not():
    base = _cfg().output_options()
    for kw in ({"threads": 1}, {"resume": True}, {"sample_interval_s": 5.0},
               {"output_format": "jsonl"}, {"fail_fast": True}):
        assert _cfg(**kw).output_options() == base, kw


def test_a_later_option_at_its_default_keeps_old_fingerprints():
    assert "engine" not in _cfg().output_options()


@pytest.mark.parametrize("kw", [{"policy": "nope"}, {"max_new_tokens": 0}, {"slo_s": -1.0},
                                {"engine": "tgi"}, {"resume": True, "force": True}, {"threads": 0}])
def test_bad_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        _cfg(**kw)
