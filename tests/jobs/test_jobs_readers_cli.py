"""`uellm validate`: exit statuses, the --json document, and the stderr summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from uellm_cli.commands.validate import register
from uellm_cli.errors import InputError

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Keep `validate` a subcommand, as in the real CLI."""

    return app


def invoke(app: typer.Typer, *args: str):
    """The file's rules only: the model's checks are tested with a tiny model below."""
    return CliRunner().invoke(app, ["validate", *args, "--no-model"])


@pytest.mark.parametrize("name", ["jobs.jsonl", "jobs.csv", "jobs.parquet", "jobs_openai.jsonl"])
def test_good_files_exit_zero(app, name):
    result = invoke(app, str(DATA / "good" / name), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"] == doc["valid"] == 5
    assert doc["rejected"] == 0 and doc["errors"] == []
    assert "5 valid" in result.stderr


def test_rejected_rows_exit_three_and_list_every_error(app):
    path = DATA / "malformed" / "missing_prompt.jsonl"
    result = invoke(app, str(path), "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert set(doc) == {"file", "format", "model", "rows", "valid", "rejected", "capped", "errors"}
    assert doc["file"] == str(path) and doc["format"] == "jsonl"
    assert (doc["rows"], doc["valid"], doc["rejected"]) == (11, 1, 10)
    assert [e["line"] for e in doc["errors"]] == list(range(1, 11))
    assert {"file", "line", "id", "field", "code", "reason", "index"} <= set(doc["errors"][0])
    # The human summary goes to stderr, with the codes in brackets (not eaten as rich markup).
    assert "[missing_field]" in result.stderr
    assert f"{path}:6 id=m6 field=prompt" in result.stderr


def test_summary_shows_at_most_twenty_errors(app, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"id": "r{i}", "prompt": ""}}\n' for i in range(25)))
    result = invoke(app, str(path))
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.count("[empty_prompt]") == 20
    assert "5 more" in result.stderr


def test_refused_file_raises_input_error(app):
    result = invoke(app, str(DATA / "malformed" / "json_array.json"))
    assert isinstance(result.exception, InputError)
    assert "JSON array" in str(result.exception)


def test_format_option(app, tmp_path):
    path = tmp_path / "job.data"
    path.write_bytes((DATA / "good" / "jobs.csv").read_bytes())
    result = invoke(app, str(path), "--format", "csv", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["format"] == "csv"


def test_validate_rejects_what_run_rejects_with_the_models_tokenizer(app, tmp_path, tiny_llama):
    path = tmp_path / "job.jsonl"
    rows = [{"id": "ok", "prompt": "Hello"}, {"id": "huge", "prompt": "word " * 40_000},
            {"id": "greedy", "prompt": "Hi", "max_new_tokens": 100_000}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["validate", str(path), "--model", str(tiny_llama), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    assert (doc["valid"], doc["rejected"], doc["capped"]) == (2, 1, 1)
    assert [(e["id"], e["code"]) for e in doc["errors"]] == [("huge", "prompt_too_long")]
    assert "tokenizer of" in result.stderr
    # the same file without the model: only the file's rules, so the long prompt passes
    assert invoke(app, str(path), "--json").exit_code == 0
