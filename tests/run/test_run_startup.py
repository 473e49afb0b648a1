"""The start-up a run records for the next plan's forecast (run/finish.py): from the moment
planning began until the engines were loaded, since vLLM is imported while the plan is made
(run/overlap.py) and the plan counts its start-up from its own start."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_builders import llama_like, query

from uellm_cli.config import RunConfig
from uellm_cli.plan.planner import make_plan
from uellm_cli.profile.hardware import parse_cluster_spec
from uellm_cli.profile.run_calibration import measured_startup_s
from uellm_cli.run.execute import Executed
from uellm_cli.run.finish import _learn_costs
from uellm_cli.run.planning import Planned, Target

CPU = parse_cluster_spec("cpu")
MODEL = llama_like(layers=4, hidden=512, heads=8, kv_heads=8, inter=1376)


def _planned(made_at_s: float) -> Planned:
    rows = [query(i, prompt=50, pred=10) for i in range(4)]
    plan = make_plan(rows, MODEL, CPU)
    return Planned(plan, {q.index: q for q in rows}, MODEL, Target(CPU, "hf", {}),
                   made_at_s=made_at_s)


def _recorded() -> float | None:
    return measured_startup_s(engine="hf", device_name=CPU.devices[0].name, model=MODEL.name)


@pytest.mark.parametrize(("made_at_s", "load_s", "ready_s", "expected"), [
    (2.0, 3.0, 6.5, 4.5),  # planning (and vLLM's import) 1.5 s, then 3 s of loading
    (2.0, 3.0, None, 3.0),  # a run that did not say when it was ready: its loading alone
])
def test_a_run_records_its_start_up_from_the_start_of_planning(made_at_s, load_s, ready_s,
                                                                expected):
    cfg = RunConfig(job=Path("job.jsonl"), out=Path("out"))
    _learn_costs(cfg, _planned(made_at_s), Executed(model_load_s=load_s, ready_s=ready_s))
    assert _recorded() == pytest.approx(expected)
