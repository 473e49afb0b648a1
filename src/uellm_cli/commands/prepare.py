"""`uellm prepare`: resolve a model once (convert a GGUF to the cache) so runs start fast."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from uellm_cli.commands.common import console
from uellm_cli.config import DEFAULT_MODEL


def prepare_command(
    model: Annotated[str, typer.Option("--model", "-m", help="HF folder, .gguf file, or alias.")] = DEFAULT_MODEL,
) -> None:
    """Make a model ready to load: converts a .gguf (or the default model's) once to the cache."""
    from uellm_cli.engine.models import resolve_model

    t = time.perf_counter()
    console.print(f"[dim]preparing {model}… (a GGUF converts once; later runs load in seconds)[/dim]")
    resolved = resolve_model(model)
    console.print(f"model [bold]{resolved.name}[/bold] ready at {resolved.path} "
                  f"({time.perf_counter() - t:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)
