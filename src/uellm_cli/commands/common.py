"""Shared pieces of the command modules: the stderr console and error rendering."""

from __future__ import annotations

import importlib
from types import ModuleType

from rich.console import Console
from rich.markup import escape

# Everything for humans goes to stderr; stdout is for data (--json).
console = Console(stderr=True)


def fail(message: str, hint: str | None = None) -> None:
    """Print one red error line (and a dim hint) on stderr."""
    # messages quote user input and install lines like 'uellm-cli[vllm]': never markup
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint: {escape(hint)}[/dim]", highlight=False, soft_wrap=True)


def optional_command_module(name: str) -> ModuleType | None:
    """uellm_cli.commands.<name>, or None when that module is not in this build (an import
    error inside the module itself still raises)."""
    try:
        return importlib.import_module(f"uellm_cli.commands.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"uellm_cli.commands.{name}":
            return None
        raise
