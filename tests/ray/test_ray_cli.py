"""`uellm run --backend ray` from the command line, before any Ray starts: a missing extra, an
unreachable address and contradicting options are one line and exit 2, with no out folder;
a local run never imports Ray."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_cli


@pytest.fixture
def job(tmp_path) -> Path:
    path = tmp_path / "job.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"r{i}", "prompt": f"say {i}"}) for i in range(3)) + "\n")
    return path


def test_missing_ray_says_how_to_install(job, tiny_llama, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"  # as if not installed
        f"sys.argv = ['uellm', 'run', {str(job)!r}, '--model', {str(tiny_llama)!r}, "
        f"'--out', {str(out)!r}, '--backend', 'ray']\n"
        "from uellm_cli.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'uellm-cli[ray]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_unreachable_ray_address_is_refused_at_once(job, tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    address = f"127.0.0.1:{_closed_port()}"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, "--backend", "ray",
                  "--ray-address", address)
    assert res.code == 2
    assert f"cannot connect to Ray at {address}" in res.err
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (("--ray-address", "auto"), "--ray-address needs --backend ray"),
    (("--backend", "ray", "--cluster", "cpu"), "--cluster and --backend ray"),
    (("--backend", "ray", "--engine", "vllm"), "--backend ray runs the hf engine"),
    (("--backend", "spark"), "--backend 'spark'"),
    (("--replicas", "0"), "--replicas must be >= 1"),
])
def test_contradicting_options_are_one_line(job, tiny_llama, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    res = run_cli(capsys, "run", job, "--model", tiny_llama, "--out", out, *extra)
    assert res.code == 2
    assert message in res.err
    assert len([line for line in res.err.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


def test_a_local_run_does_not_import_ray(job, tiny_llama, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys\n"
        f"sys.argv = ['uellm', 'run', {str(job)!r}, '--model', {str(tiny_llama)!r}, "
        f"'--out', {str(out)!r}, '--no-history', '-q']\n"
        "from uellm_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('RAY' if 'ray' in sys.modules else 'NO-RAY', code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["NO-RAY", "0"], proc.stderr
    assert (out / "results.parquet").exists()


def test_help_shows_the_install_lines_of_the_extras(capsys):
    import re

    res = run_cli(capsys, "run", "--help")
    assert res.code == 0
    flat = re.sub(r"[\s│]+", "", res.out + res.err)  # the help box wraps long lines
    assert "pipinstall'uellm-cli[ray]'" in flat and "pipinstall'uellm-cli[vllm]'" in flat
