"""Terminal summary, report.json and the self-contained report.html, on awkward runs too."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from uellm_cli.jobs.results import BatchRecord, RowResult
from uellm_cli.report.metrics import summarize
from uellm_cli.report.render import terminal_summary, write_report_json
from uellm_cli.report.render_html import write_report_html
from uellm_cli.report.rundir import load_run, rerender, write_reports

SECTIONS = ("summary", "forecast", "timeline", "latency", "latency-cdf", "predictor", "replicas",
            "utilisation", "rows", "run")
SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def make_run(n: int, *, deadlines: bool = True, failed: bool = False, replicas: int = 2):
    """n rows in batches of up to 4 on `replicas` replicas; every third row misses its deadline."""
    results, batches = [], []
    clock = [1.0] * replicas
    for b, start in enumerate(range(0, n, 4)):
        members = list(range(start, min(start + 4, n)))
        rep = b % replicas
        t0, t1 = clock[rep], clock[rep] + 0.5 + 0.1 * len(members)
        clock[rep] = t1
        outs = [3 + (i * 7) % 40 for i in members]
        if not failed:
            batches.append(BatchRecord(batch=b, replica=rep, rows=members, started_s=t0, finished_s=t1,
                                       steps=max(outs), prompt_width=16, output_tokens=sum(outs),
                                       forecast_start_s=t0, forecast_finish_s=t1 * 0.9))
        for i, out in zip(members, outs, strict=True):
            dl = (t1 - 0.1 if i % 3 == 0 else t1 + 5) if deadlines else None
            if failed:
                results.append(RowResult(index=i, id=f"row-{i}", status="error", deadline_s=dl,
                                         error_code="oom", error_message="out of <memory> & more"))
            else:
                results.append(RowResult(index=i, id=f"row-{i}", status="ok", output_text="hi", finish_reason="stop",
                                         prompt_tokens=9, output_tokens=out, predicted_output_tokens=out + i % 5,
                                         replica=rep, batch=b, started_s=t0, finished_s=t1, latency_s=t1,
                                         deadline_s=dl))
    util = [{"t_s": t * 0.5, "cpu_pct": 90.0 + t, "rss_bytes": 10_000_000 + t, "gpus": []} for t in range(6)]
    return results, batches, util


def render(tmp_path, results, batches, util, forecast=None):
    m = summarize(results, batches, model_load_s=0.8, forecast=forecast, utilisation=util)
    path = write_report_html(tmp_path, m, results=results, batches=batches, utilisation=util,
                             plan_dict={"policy": "slo-odbs"}, options={"job": "j.jsonl", "model": "tiny"},
                             versions={"uellm": "0"})
    return m, path.read_text(encoding="utf-8")


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?(?:https?:)?//""", html, re.I)
    assert "@import" not in html
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= SVG_NAMESPACES


@pytest.mark.parametrize("case", ["normal", "no_deadlines", "all_failed", "one_row", "empty", "many"])
def test_html_renders_every_section_self_contained(tmp_path, case):
    kw = {"normal": dict(n=40), "no_deadlines": dict(n=12, deadlines=False), "all_failed": dict(n=9, failed=True),
          "one_row": dict(n=1, replicas=1), "empty": dict(n=0), "many": dict(n=2500, replicas=3)}[case]
    results, batches, util = make_run(**kw)
    _, html = render(tmp_path, results, batches, util, forecast={"makespan_s": 3.0})
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    assert_self_contained(html)
    charts = html.count("<svg")
    if case in ("normal", "many"):
        assert charts >= 5  # gantt, latency, cdf, predictor, utilisation
    if case == "empty":
        assert "No batch ran." in html
    if case == "all_failed":
        assert "out of &lt;memory&gt; &amp; more" in html  # escaped, not injected
        assert "<memory>" not in html
    if case == "no_deadlines":
        assert "No row has a deadline" in html


def test_svg_ids_do_not_clash_between_charts(tmp_path):
    results, batches, util = make_run(30)
    _, html = render(tmp_path, results, batches, util)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))


def test_terminal_summary_is_short_and_has_units(tmp_path):
    results, batches, util = make_run(20)
    m = summarize(results, batches, model_load_s=0.8, forecast={"makespan_s": 3.0})
    console = Console(record=True, width=100)
    console.print(terminal_summary(m, out_dir=tmp_path))
    text = console.export_text()
    assert "SLO attainment" in text and "%" in text
    assert "tok/s" in text and "p99" in text and "model load" in text
    assert "forecast makespan" in text and "forecast SLO" not in text
    assert str(tmp_path / "report.html") in text
    assert len(text.strip().splitlines()) <= 10


def test_terminal_summary_sets_the_deadlines_expected_beside_the_actual(tmp_path):
    results, batches, _ = make_run(20)
    m = summarize(results, batches, forecast={"makespan_s": 3.0, "slo_attainment": 0.9,
                                              "expected_slo_attainment": 0.55,
                                              "slo_attainment_range": [0.5, 0.6], "slo_draws": 16})
    console = Console(record=True, width=200)
    console.print(terminal_summary(m, out_dir=tmp_path))
    line = next(s for s in console.export_text().splitlines() if "forecast SLO" in s)
    assert "55.0% expected (50.0%-60.0% over 16 draws" in line
    assert f"actual {100 * m.slo_attainment:.1f}%" in line
    _, html = render(tmp_path, results, batches, [], forecast=m.forecast)
    assert "rows at their likely lengths" in html and "55.0% expected (50.0%-60.0%" in html


def test_report_json_holds_what_rerendering_needs(tmp_path):
    results, batches, util = make_run(10)
    m = summarize(results, batches, model_load_s=0.8, forecast={"makespan_s": 3.0, "slo_attainment": float("nan")},
                  utilisation=util)
    path = write_report_json(tmp_path, m, plan_dict={"policy": "fcfs"}, options={"slo": 5}, versions={"uellm": "0"},
                             results=results, batches=batches, utilisation=util)
    doc = json.loads(path.read_text())  # strict JSON: the NaN became null
    assert doc["forecast"]["slo_attainment"] is None
    assert doc["metrics"]["makespan_s"] == m.makespan_s
    assert doc["metrics"]["replicas"][0]["replica"] == 0
    assert doc["plan"] == {"policy": "fcfs"} and doc["options"] == {"slo": 5}
    assert [b["batch"] for b in doc["batches"]] == [b.batch for b in batches]
    assert doc["utilisation"] == util
    assert doc["model_load_s"] == 0.8


def test_run_folder_round_trip(tmp_path):
    results, batches, util = make_run(15)
    m = summarize(results, batches, model_load_s=0.8, forecast={"makespan_s": 3.0}, utilisation=util)
    write_reports(tmp_path, m, results=results, batches=batches, utilisation=util, plan_dict={"p": 1},
                  options={"o": 1}, versions={"v": 1})
    with (tmp_path / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r.to_record()) + "\n")
    (tmp_path / "report.html").unlink()
    data = load_run(tmp_path)
    assert [r.id for r in data.results] == [r.id for r in results]
    assert data.batches == batches
    m2, _, html_path = rerender(tmp_path)
    assert m2 == m
    assert html_path.exists()


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_far_deadlines_still_draw_the_latency_chart(tmp_path):
    results, batches, util = make_run(6)
    for r in results:
        r.deadline_s = 3600.0  # an hour, against latencies of a few seconds
    _, html = render(tmp_path, results, batches, util)
    assert "<svg" in _section(html, "latency")


def test_title_is_kept_for_rerendering(tmp_path):
    results, batches, util = make_run(3)
    m = summarize(results, batches)
    write_reports(tmp_path, m, results=results, batches=batches, title="uellm run nightly <b>")
    with (tmp_path / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r.to_record()) + "\n")
    _, data, html_path = rerender(tmp_path)
    assert data.title == "uellm run nightly <b>"
    assert "<h1>uellm run nightly &lt;b&gt;</h1>" in html_path.read_text()
