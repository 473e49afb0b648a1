"""The plan of a continuous-batching engine: deadline order with Moore-Hodgson demotion by
simulation, the concurrency chosen by simulation, and a vLLM plan end to end on a cluster."""

from __future__ import annotations

from plan_builders import cluster, gpu, llama_like, query

from uellm_cli.plan import stream_forecast as sf
from uellm_cli.plan.planner import make_plan
from uellm_cli.plan.types import StreamLimits


def _one_at_a_time() -> StreamLimits:
    """One row at a time, like a single machine: a row of p tokens takes p one-second steps."""
    return StreamLimits(max_num_seqs=1, max_num_batched_tokens=100, kv_cache_bytes=0,
                        kv_blocks=10_000, block_size=16, max_model_len=4096)


def _second(*_args) -> float:
    return 1.0


def test_demotion_follows_moore_and_hodgson_on_a_single_server():
    # (tokens, deadline): in deadline order A ends at 4, B would end at 7 > 6; dropping the
    # longest of those seen (A) lets B, C and D all make it (3, 5, 6 <= 6, 7, 8)
    rows = [query(0, prompt=1, pred=4, deadline=5.0), query(1, prompt=1, pred=3, deadline=6.0),
            query(2, prompt=1, pred=2, deadline=7.0), query(3, prompt=1, pred=1, deadline=8.0)]
    kept, late = sf._order_by_simulation(rows, _one_at_a_time(), _second, 0.0)
    assert [q.index for q in kept] == [1, 2, 3] and [q.index for q in late] == [0]
    sim = sf._simulate(kept + late, _one_at_a_time(), _second, 0.0)
    assert all(sim.finish_s[q.index] <= q.deadline_s for q in kept)


def test_nothing_is_demoted_when_deadline_order_meets_every_deadline():
    rows = [query(i, prompt=1, pred=2, deadline=10.0 * (i + 1)) for i in range(5)]
    kept, late = sf._order_by_simulation(rows, _one_at_a_time(), _second, 0.0)
    assert [q.index for q in kept] == [0, 1, 2, 3, 4] and late == []


def _may_loop(upper: int) -> list:
    """Row 1 most likely needs 2 tokens but may loop (mean 5, upper `upper`). Deadline order
    on one row at a time: on the points row 0 is demoted and the rest fit; on the means row 1
    is (at the means, row 3 would miss with row 1 kept)."""
    from dataclasses import replace

    rows = [query(0, prompt=1, pred=3, deadline=3.0), query(1, prompt=1, pred=2, deadline=6.0),
            query(2, prompt=1, pred=2, deadline=7.0), query(3, prompt=1, pred=2, deadline=8.0)]
    rows[1] = replace(rows[1], predicted_upper=upper, expected_tokens=5, max_new_tokens=40)
    return rows


def test_rows_are_demoted_as_their_mean_lengths_say():
    from dataclasses import replace

    rows = _may_loop(upper=2)
    assert sf.decision_lengths(rows) == {1: 5}

    def demoted(lengths):
        kept, late = sf._order_by_simulation(rows, _one_at_a_time(), _second, 0.0, lengths=lengths)
        return [q.index for q in kept], [q.index for q in late]

    assert demoted(None) == ([1, 2, 3], [0])
    assert demoted(sf.decision_lengths(rows)) == ([0, 2, 3], [1])
    at_means = [replace(q, predicted_tokens=q.expected_tokens or q.predicted_tokens) for q in rows]
    for order, met in (([1, 2, 3, 0], 2), ([0, 2, 3, 1], 3)):  # each order, run at the means
        sim = sf._simulate([at_means[i] for i in order], _one_at_a_time(), _second, 0.0)
        assert sum(1 for q in at_means if sim.finish_s[q.index] <= q.deadline_s) == met


def test_the_draws_choose_between_demoting_on_the_means_and_on_the_points():
    """A job judged whole: each finalist is tried with its rows demoted on their means and on
    their points, and the draws of the lengths choose. Drawn up to 40 tokens (2 of the 4 draws
    make row 1 loop, to 11 and 14), keeping row 1 costs rows 2 and 3; drawn with no spread (an
    upper at the point), row 1 is kept."""

    def chosen(rows):
        _, kept, late, _ = sf._search(rows, [], (1,), lambda _n: _one_at_a_time(), _second, 0.0, {})
        return [q.index for q in kept], [q.index for q in late]

    assert chosen(_may_loop(upper=40)) == ([0, 2, 3], [1])
    assert chosen(_may_loop(upper=2)) == ([1, 2, 3], [0])


def test_demoted_rows_run_shortest_first():
    late = [query(0, pred=50), query(1, pred=5), query(2, pred=20)]
    assert [q.index for q in sf._late_order(late)] == [1, 2, 0]


def test_a_vllm_plan_on_a_gpu_is_a_simulated_stream_with_its_limits():
    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    rows = [query(i, prompt=200, pred=100 + 10 * (i % 5), deadline=30.0 + i) for i in range(60)]
    plan = make_plan(rows, model, cluster([gpu(0, mem_gb=24)]), engine="vllm")
    assert plan.engine == "vllm" and set(plan.stream) == {0}
    lim = plan.stream[0]
    assert lim.block_size == 16 and lim.max_num_seqs in sf.SEQS_CANDIDATES
    assert all(len(b.rows) == 1 for b in plan.batches)  # every row its own start and finish
    assert set(plan.forecast) == {q.index for q in rows}
    assert plan.summary["makespan_s"] > 0 and plan.summary["padding_waste"] == 0.0
    skipping = make_plan(rows, model, cluster([gpu(0, mem_gb=24)]), engine="vllm", on_miss="skip")
    assert all(f.slo_met is not False for i, f in skipping.forecast.items() if i not in skipping.skipped)


def test_the_expected_end_runs_the_chosen_order_at_the_mean_lengths():
    """Rows whose mean is above their point (a small chance of a loop): each row's forecast
    stays at its point (every deadline is met either way, so the choices agree), and one more
    simulation at the means gives the job's end."""
    from dataclasses import replace

    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    rows = [query(i, prompt=200, pred=60, deadline=20.0 + i, max_new=512) for i in range(40)]
    looping = [replace(q, expected_tokens=140) for q in rows]
    plain = make_plan(rows, model, cluster([gpu(0, mem_gb=24)]), engine="vllm")
    mean = make_plan(looping, model, cluster([gpu(0, mem_gb=24)]), engine="vllm")
    assert "expected_makespan_s" not in plain.summary
    assert {i: (f.start_s, f.finish_s) for i, f in mean.forecast.items()} == \
        {i: (f.start_s, f.finish_s) for i, f in plain.forecast.items()}
    assert mean.stream == plain.stream and mean.summary["makespan_s"] == plain.summary["makespan_s"]
    assert mean.summary["expected_makespan_s"] > 1.5 * mean.summary["makespan_s"]
    # a plan revised while the job runs (reschedule) does not pay for the simulation at the means
    from uellm_cli.plan.costmodel import CostModel

    args = (mean.batches, {q.index: q for q in looping}, mean.deployment.replicas,
            CostModel(model, cluster([gpu(0, mem_gb=24)])))
    revised = sf.stream_forecast(*args, start_s=0.0)
    assert revised.expected_end_s is None and revised.met_draws == []
    assert sf.stream_forecast(*args, start_s=0.0, expected=True).expected_end_s > 0


def test_the_deadlines_expected_are_counted_over_draws_of_the_lengths():
    """Rows that make their deadline at their points with little to spare: any row that runs
    longer misses, so over draws of uncertain lengths fewer are expected to meet their
    deadline than the points say, and the range holds the expectation; rows predicted exactly
    (upper = point) expect what their points say. The plan itself is the points' either way."""
    from dataclasses import replace

    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    gpus = cluster([gpu(0, mem_gb=24)])
    exact = [query(i, prompt=200, pred=60, deadline=0.2 + 0.005 * i, max_new=512) for i in range(300)]
    point = make_plan(exact, model, gpus, engine="vllm").summary
    met_at_points = point["slo_attainment"]
    assert 0.2 < met_at_points < 1.0  # some miss, so the deadlines are tight for the rest
    assert point["expected_slo_attainment"] == met_at_points
    assert point["slo_attainment_range"] == [met_at_points, met_at_points]
    assert point["slo_draws"] == sf.FORECAST_DRAWS
    uncertain = make_plan([replace(q, predicted_upper=240) for q in exact], model, gpus,
                          engine="vllm")
    s = uncertain.summary
    assert s["slo_attainment"] == met_at_points
    assert s["expected_slo_attainment"] < met_at_points - 0.05
    low, high = s["slo_attainment_range"]
    assert low <= s["expected_slo_attainment"] <= high


def test_large_jobs_draw_fewer_lengths():
    assert sf.forecast_draws(1000) == sf.FORECAST_DRAWS
    assert sf.forecast_draws(100_000) == sf.MIN_FORECAST_DRAWS
    assert sf.MIN_FORECAST_DRAWS < sf.forecast_draws(5_000) < sf.FORECAST_DRAWS


def test_a_running_row_past_its_mean_still_has_a_token_to_come():
    from dataclasses import replace

    q = sf._with_progress(replace(query(0, pred=10, max_new=100), expected_tokens=12), 30)
    assert (q.predicted_tokens, q.expected_tokens) == (31, 31)
    assert sf._with_progress(replace(query(1, pred=50), expected_tokens=70), 30).expected_tokens == 70


def _cpu_like_step(_prefill, _attention, decode_rows, _context, _sampled) -> float:
    """A step on a small CPU: 0.1 s of overhead, 7 ms per decoding row (fitted to vLLM on 2 cores
    here), so fewer rows at once decode each faster but the job slower."""
    return 0.1 + 0.007 * decode_rows


def _limits_for(seqs: int) -> StreamLimits:
    return StreamLimits(max_num_seqs=seqs, max_num_batched_tokens=4096, kv_cache_bytes=0,
                        kv_blocks=100_000, block_size=16, max_model_len=4096)


def test_deadlines_are_not_bought_with_more_than_the_throughput_floor(monkeypatch):
    """200 rows of 100 tokens: all at once end at ~150 s; 64 at once meet the early deadlines
    but end ~13% later. With a floor of 0.9 the plan keeps the throughput: 256 at once, but the
    earliest rows held to fewer at once (an early profile), which meets more deadlines within
    the floor."""
    monkeypatch.setattr(sf, "THROUGHPUT_FLOOR", 0.9)
    rows = [query(i, prompt=8, pred=100, deadline=40.0 + i) for i in range(200)]
    lim, kept, late, _ = sf._search(rows, [], (256, 64), _limits_for, _cpu_like_step, 0.0, {})
    assert lim.max_num_seqs == 256 and lim.early_cap is not None and 0 < lim.early_rows < len(kept)
    sim = sf._simulate(kept + late, lim, _cpu_like_step, 0.0)
    fastest = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(256), _cpu_like_step, 0.0)
    assert sim.end_s <= fastest.end_s / sf.THROUGHPUT_FLOOR
    assert sf._met(rows, sim) > sf._met(rows, fastest)
    # without the floor, 64 at once wins on deadlines: the floor is what decided it
    slow = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(64), _cpu_like_step, 0.0)
    assert sf._met(rows, slow) > sf._met(rows, fastest)
    assert slow.end_s > fastest.end_s / sf.THROUGHPUT_FLOOR


def test_deadlines_may_cost_up_to_the_floor_in_throughput():
    """128 urgent rows and 200 late ones, 100 tokens each, on a CPU-like step: all at once end
    at ~247 s and miss every urgent deadline; 128 at once meet them all and end ~4% later,
    within the floor: the plan meets them all, within it."""
    rows = [query(i, prompt=8, pred=100, deadline=105.0 if i < 128 else 1000.0) for i in range(328)]
    fastest = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(256), _cpu_like_step, 0.0)
    assert sf._met(rows, fastest) == 200
    lim, kept, late, _ = sf._search(rows, [], (256, 128, 64), _limits_for, _cpu_like_step, 0.0, {})
    sim = sf._simulate(kept + late, lim, _cpu_like_step, 0.0)
    assert sf._met(rows, sim) == 328
    assert sim.end_s <= fastest.end_s / sf.THROUGHPUT_FLOOR
    s128 = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(128), _cpu_like_step, 0.0)
    assert fastest.end_s / 0.97 < s128.end_s <= fastest.end_s / sf.THROUGHPUT_FLOOR


def test_a_slower_concurrency_within_the_floor_is_taken_for_its_deadlines():
    """When a step costs in proportion to its rows (no overhead to share), running the 128
    urgent rows first costs no throughput and meets their deadlines; all 200 at once would not."""
    def per_row(_p, _a, decode_rows, _c, _s) -> float:
        return 0.001 + 0.005 * decode_rows

    rows = [query(i, prompt=8, pred=20 if i < 128 else 100, deadline=15.0 if i < 128 else 1000.0)
            for i in range(200)]
    all_at_once = sf._simulate(rows, _limits_for(256), per_row, 0.0)
    assert sf._met(rows, all_at_once) == 72  # the urgent rows crawl with the long ones
    lim, kept, late, _ = sf._search(rows, [], (256, 128), _limits_for, per_row, 0.0, {})
    sim = sf._simulate(kept + late, lim, per_row, 0.0)
    assert sf._met(rows, sim) == 200 and lim.max_num_seqs == 128
    assert sim.end_s <= all_at_once.end_s / sf.THROUGHPUT_FLOOR


def test_demoted_rows_are_held_back_when_running_beside_the_rest_costs_those_deadlines(monkeypatch):
    """100 rows of 100 tokens, deadlines 20-21 s, 64 at once, a step costing 5 ms a row: 32
    rows at once make 20 s. Demoted rows let in as slots free up run beside the kept ones (the
    best the plan finds that way: 16 at once for the first rows, 16 on time); held back until
    few kept ones are left, 32 make it, within a floor of 0.9."""
    monkeypatch.setattr(sf, "THROUGHPUT_FLOOR", 0.9)

    def per_row(_p, _a, decode_rows, _c, _s) -> float:
        return 0.05 + 0.005 * decode_rows

    rows = [query(i, prompt=8, pred=100, deadline=20.0 if i < 40 else 21.0) for i in range(100)]

    def searched():
        lim, kept, late, _ = sf._search(rows, [], (64,), _limits_for, per_row, 0.0, {})
        return lim, kept, sf._simulate(kept + sf._late_order(late), lim, per_row, 0.0)

    lim, kept, sim = searched()
    assert lim.held_from == len(kept) and sf._met(rows, sim) == len(kept) > 0
    fastest = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(64), per_row, 0.0)
    assert sim.end_s <= fastest.end_s / sf.THROUGHPUT_FLOOR
    monkeypatch.setattr(sf, "HOLD_RELEASES", ())
    unheld, _, unheld_sim = searched()
    assert unheld.held_from is None and sf._met(rows, unheld_sim) < sf._met(rows, sim)


def test_a_plan_kept_from_its_own_start_meets_what_it_forecast():
    """still_met simulates a plan's rows in its order and ranks under its limits (early cap,
    demoted rows held): from the plan's own start and state, that is its own forecast."""
    from uellm_cli.plan.costmodel import CostModel

    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    gpus = cluster([gpu(0, mem_gb=24)])
    rows = [query(i, prompt=200, pred=120 + 40 * (i % 3), deadline=0.6 + 0.02 * i) for i in range(300)]
    plan = make_plan(rows, model, gpus, engine="vllm")
    met = sum(1 for f in plan.forecast.values() if f.slo_met)
    assert 0 < met < len(rows)  # some rows demoted: a plan with something to keep
    cost = CostModel(model, gpus)
    start = min(f.start_s for f in plan.forecast.values())
    queries = {q.index: q for q in rows}
    kept = sf.still_met(plan.batches, plan.stream, queries, plan.deployment.replicas, cost,
                        start_s=start, progress={})
    assert kept == met
    later = sf.still_met(plan.batches, plan.stream, queries, plan.deployment.replicas, cost,
                         start_s=start + 0.3, progress={})
    assert later < met  # the same plan started later meets fewer


def test_a_revised_plan_chooses_how_many_run_at_once_again_under_the_engines_limits():
    """While the job runs, max_num_seqs and the KV cache are the engine's, but how many rows we
    feed it at once is ours: a cap the first plan set for its tight rows is dropped once the
    rows left have room (it had held every rank left, the running rows' too)."""
    from dataclasses import replace

    from uellm_cli.plan.planner import reschedule

    model = llama_like(layers=8, hidden=1024, heads=8, kv_heads=8, inter=2816)
    gpus = cluster([gpu(0, mem_gb=24)])
    rows = [query(i, prompt=200, pred=100, deadline=1000.0) for i in range(60)]
    plan = make_plan(rows, model, gpus, engine="vllm")
    capped = replace(plan, stream={0: replace(plan.stream[0], early_cap=4, early_rows=1000)})
    revised = reschedule(rows[10:], capped, model, gpus, start_s=1.0, progress={10: 5, 11: 7})
    lim = revised.stream[0]
    assert lim.max_num_seqs == plan.stream[0].max_num_seqs and lim.kv_blocks == plan.stream[0].kv_blocks
    assert lim.early_cap is None and all(f.slo_met for f in revised.forecast.values())


def test_lengths_are_drawn_around_each_rows_prediction():
    """The point is the median of a row's draws and its upper the 0.9 quantile, within its
    budget; a row predicted exactly (upper = point) always draws its point; same rows, same draws."""
    rows = [query(i, prompt=8, pred=40, upper=80, max_new=128) for i in range(2000)]
    exact = query(9999, prompt=8, pred=33, upper=33, max_new=128)
    (drawn,) = sf.length_draws([*rows, exact], 1)
    lengths = sorted(drawn[q.index] for q in rows)
    assert 37 <= lengths[1000] <= 43 and 74 <= lengths[1800] <= 86
    assert lengths[0] >= 1 and lengths[-1] <= 128
    assert drawn[exact.index] == 33
    assert sf.length_draws(rows[:50], 3) == sf.length_draws(rows[:50], 3)


def test_drawn_lengths_carry_no_more_work_than_the_rows_means():
    """A row predicted at 40 whose upper says 80 but whose mean is 44: drawn to its upper, the
    draws would average ~47; they average its mean instead, with the point still their median.
    A mean that allows the upper's spread keeps it."""
    from dataclasses import replace

    rows = [replace(query(i, prompt=8, pred=40, upper=80, max_new=512), expected_tokens=44)
            for i in range(4000)]
    lengths = sorted(d[q.index] for d in sf.length_draws(rows, 2) for q in rows)
    assert 43 <= sum(lengths) / len(lengths) <= 45.5
    assert 38 <= lengths[len(lengths) // 2] <= 42 and lengths[int(0.9 * len(lengths))] < 75
    wide = [replace(q, expected_tokens=60) for q in rows]
    lengths = sorted(d[q.index] for d in sf.length_draws(wide, 2) for q in wide)
    assert 75 <= lengths[int(0.9 * len(lengths))] <= 86


def test_the_finalists_are_judged_on_drawn_lengths(monkeypatch):
    """300 rows predicted at 20 tokens that may run to 90, deadlines 15-60 s: at the points the
    search holds no demoted row back; judged on drawn lengths it holds them, and on lengths it
    never drew (draws 10-29) that plan meets more deadlines than the one the points chose."""
    import random

    monkeypatch.setattr(sf, "THROUGHPUT_FLOOR", 0.9)  # the candidates this job was built for
    rnd = random.Random(0)
    rows = [query(i, prompt=8, pred=20, upper=90, max_new=128, deadline=rnd.uniform(15, 60))
            for i in range(300)]

    def chosen() -> tuple:
        lim, kept, late, _ = sf._search(rows, [], (256, 128, 64), _limits_for, _cpu_like_step, 0.0, {})
        order = kept + sf._late_order(late)
        met = 0
        for drawn in sf.length_draws(order, 30)[10:]:
            met += sf._met(order, sf._simulate(order, lim, _cpu_like_step, 0.0, lengths=drawn))
        return lim, met

    on_draws, met_draws = chosen()
    monkeypatch.setattr(sf, "DRAW_FINALISTS", 1)  # the best candidate at the points
    at_points, met_points = chosen()
    assert at_points.held_from is None and on_draws.held_from is not None
    assert met_draws > met_points


def test_a_job_judged_on_its_head_keeps_the_heads_throughput_floor(monkeypatch):
    """200 rows of 100 tokens: 64 at once meet more early deadlines than 256 but end ~13%
    later. Judged on every row, a floor that allows it takes it; judged on its first rows
    only (the rest pay the throughput uncounted), the plan stays within HEAD_THROUGHPUT_FLOOR."""
    monkeypatch.setattr(sf, "THROUGHPUT_FLOOR", 0.8)
    rows = [query(i, prompt=8, pred=100, deadline=40.0 + i) for i in range(200)]
    fastest = sf._simulate(sorted(rows, key=sf.edf_key), _limits_for(256), _cpu_like_step, 0.0)

    def chosen_end() -> float:
        lim, kept, late, _ = sf._search(rows, [], (256, 64), _limits_for, _cpu_like_step, 0.0, {})
        return sf._simulate(kept + sf._late_order(late), lim, _cpu_like_step, 0.0).end_s

    assert chosen_end() > fastest.end_s / sf.HEAD_THROUGHPUT_FLOOR
    monkeypatch.setattr(sf, "SEARCH_ROWS", 150)
    assert chosen_end() <= fastest.end_s / sf.HEAD_THROUGHPUT_FLOOR
