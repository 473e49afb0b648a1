"""The `uellm` command: Typer wiring only. Each command lives in uellm_cli/commands/.

Keep imports here light: `uellm --help` must not import torch.
"""

from __future__ import annotations

import os
import sys

import typer

from uellm_cli import __version__

app = typer.Typer(
    name="uellm",
    help="Run batches of LLM prompts offline and finish them before their deadlines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules that may not exist in every build are skipped, never half-registered.
COMMAND_MODULES = ("run", "prepare", "plan", "profile", "validate", "report", "history")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"uellm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """uellm: profile, plan (SLO-ODBS + HELR), run and report offline LLM batch jobs."""


def _register_all() -> None:
    from uellm_cli.commands.common import optional_command_module

    for name in COMMAND_MODULES:
        module = optional_command_module(name)
        if module is not None:
            module.register(app)


_register_all()


def _ignore_signals_while_exiting() -> None:
    """After an interrupt everything is on disk; one more Ctrl-C during interpreter shutdown
    (torch's atexit hooks) would only print a traceback, so shutdown ignores it."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _click_types(name: str) -> tuple[type, ...]:
    """click's exception class `name`, and Typer's copy of it: Typer 0.22+ ships its own click
    (typer._click), whose usage errors are not click's."""
    import click

    types = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        vendored = None
    if vendored is not None and hasattr(vendored, name):
        types.append(getattr(vendored, name))
    return tuple(types)


def main() -> None:
    """Entry point: one red line (and exit status) per known error; tracebacks only for bugs,
    and those only under UELLM_DEBUG=1 (otherwise one line pointing at it)."""
    from uellm_cli.commands.common import fail
    from uellm_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, UellmError

    try:
        # standalone_mode=False: click returns typer.Exit's code instead of exiting
        code = app(standalone_mode=False, prog_name="uellm")
        if code == EXIT_INTERRUPTED:
            _ignore_signals_while_exiting()
        sys.exit(code if isinstance(code, int) else 0)
    except UellmError as exc:
        fail(str(exc), exc.hint)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _ignore_signals_while_exiting()
        fail("interrupted", "rerun the same command (or add --resume) to continue")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # click usage errors carry their own exit code
        if isinstance(exc, (typer.Abort, *_click_types("Abort"))):
            sys.exit(EXIT_INTERRUPTED)
        if isinstance(exc, _click_types("ClickException")):  # e.g. a mistyped option: exit 2
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("UELLM_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc}",
             "this is a bug in uellm; rerun with UELLM_DEBUG=1 for the traceback and report it")
        sys.exit(EXIT_FAILED)
