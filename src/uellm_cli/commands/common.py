"""Shared pieces of the command modules: the stderr console and error rendering."""

from __future__ import annotations

from rich.console import Console

# Everything for humans goes to stderr; stdout is for data (--json).
console = Console(stderr=True)


def fail(message: str, hint: str | None = None) -> None:
    """Print one red error line (and a dim hint) on stderr."""
    console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint: {hint}[/dim]", highlight=False, soft_wrap=True)
