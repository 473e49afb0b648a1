"""Run the real `uellm` entry point in-process: exit status, stdout and stderr, like a shell."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> CliResult:
    from uellm_cli.cli import main

    old = sys.argv
    sys.argv = ["uellm", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)
