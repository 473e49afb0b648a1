"""Shared pieces of the command modules: the stderr console and error rendering."""

from __future__ import annotations

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
