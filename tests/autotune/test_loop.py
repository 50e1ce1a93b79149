"""The tuning loop's decisions with a fake target and programmed timings (no real timing), the
GPU timing path with mocks, GPU candidates from the plan model, and the Triton plan override."""
import pytest
import torch

from autotune import candidates, runner, timing
from autotune.workloads import Workload, parse_ops, parse_shapes
from flashseq.kernels.fused_rnn import triton_tuned
from flashseq.kernels.fused_rnn.plan import plan_fused_rnn

W = Workload("lstm", 4, 8, 1, 16, "float32")


class FakeTarget:
    """Configs are names; call(w, c) returns a function tagged with its config."""

    device = torch.device("cpu")
    kernel = "fake"

    def __init__(self, cands, bad=()):
        self.cands, self.bad = cands, set(bad)

    def default(self):
        return "default"

    def candidates(self, w, k):
        return self.cands[:k]

    def check(self, w, c):
        return "differs" if c in self.bad else None

    def call(self, w, c):
        def fn():
            return c
        fn.config = c
        return fn

    def describe(self, c):
        return c

    def bucket(self, w):
        return {"cell": w.cell}

    def to_json(self, c):
        return {"name": c}

    def peer_calls(self, w, c):
        return None


@pytest.fixture
def programmed(monkeypatch):
    """median_ms and paired_ratio answer from tables keyed by the functions' configs."""
    medians, ratios, asked = {}, {}, []

    def median_ms(fn, device, **kw):
        return {"median_ms": medians[fn.config], "iqr_ms": 0.0, "samples": 5}

    def paired_ratio(fn, baseline, device, **kw):
        asked.append((fn.config, baseline.config))
        return {"ratio": ratios[(fn.config, baseline.config)], "pairs": 7}

    monkeypatch.setattr(timing, "median_ms", median_ms)
    monkeypatch.setattr(timing, "paired_ratio", paired_ratio)
    return medians, ratios, asked


def test_fastest_candidate_wins_and_is_compared_with_the_default(programmed):
    medians, ratios, asked = programmed
    medians.update(default=10.0, a=5.0, b=8.0)
    ratios[("a", "default")] = 0.5
    res = runner.tune_workload(FakeTarget(["a", "b", "default"]), W, runner.Settings(k=3))
    assert res.config == "a" and res.ratio_vs_untuned == 0.5 and res.untuned_ms == 10.0
    assert res.candidates == 2  # the default among the candidates is timed once, as default
    assert asked == [("a", "default")]  # not close to b: no noise check


def test_close_winners_are_retimed_in_alternation(programmed):
    medians, ratios, asked = programmed
    medians.update(default=10.0, a=5.0, b=5.1)
    ratios[("a", "b")] = 1.08  # side by side, b is faster after all
    ratios[("b", "default")] = 0.6
    res = runner.tune_workload(FakeTarget(["a", "b"]), W, runner.Settings(k=2))
    assert asked == [("a", "b"), ("b", "default")]
    assert res.config == "b" and res.time_ms == 5.1


def test_a_winner_not_faster_side_by_side_gives_way_to_the_default(programmed):
    medians, ratios, _ = programmed
    medians.update(default=10.0, a=9.0)
    ratios[("a", "default")] = 0.98  # within the noise margin: not worth a cache entry
    res = runner.tune_workload(FakeTarget(["a"]), W, runner.Settings(k=1))
    assert res.config == "default" and res.ratio_vs_untuned == 1.0


def test_candidates_that_compute_something_else_are_never_timed(programmed):
    medians, ratios, _ = programmed
    medians.update(default=10.0, b=9.0)  # no entry for a: timing it would fail
    ratios[("b", "default")] = 0.9
    res = runner.tune_workload(FakeTarget(["a", "b"], bad={"a"}), W, runner.Settings(k=2))
    assert res.config == "b" and res.rejected == ["a: differs"]


def test_budget_skips_the_remaining_workloads(programmed):
    medians, _, _ = programmed
    medians.update(default=1.0)
    results = runner.tune(FakeTarget([]), [W, W], runner.Settings(k=1), budget_s=1e-12)
    assert all(r.skipped for r in results)


def test_cuda_timing_uses_do_bench(monkeypatch):
    seen = {}

    def fake_do_bench(fn, warmup, rep, quantiles, return_mode):
        seen.update(warmup=warmup, rep=rep, return_mode=return_mode)
        fn()
        return [2.0, 1.0, 3.0, 2.0]

    monkeypatch.setattr(timing, "_do_bench", lambda: fake_do_bench)
    monkeypatch.setattr(timing, "_sync", lambda device: None)
    out = timing.median_ms(lambda: None, "cuda", warmup=1)
    assert out["median_ms"] == 2.0 and out["samples"] == 4 and seen["return_mode"] == "all"


def test_cuda_timing_without_triton_uses_events_with_an_l2_flush(monkeypatch):
    monkeypatch.setattr(timing, "_do_bench", lambda: None)
    calls = []
    monkeypatch.setattr(timing, "_cuda_event_samples",
                        lambda fn, device, reps: calls.append(reps) or [1.0] * reps)
    out = timing.median_ms(lambda: None, "cuda", warmup=0, min_reps=9)
    assert out["median_ms"] == 1.0 and calls == [20]


def test_cpu_timing_and_ratio_see_a_real_difference():
    import time
    slow = timing.median_ms(lambda: time.sleep(0.004), "cpu", min_time=0.05, max_time=0.5)
    fast = timing.median_ms(lambda: time.sleep(0.001), "cpu", min_time=0.05, max_time=0.5)
    assert slow["median_ms"] > fast["median_ms"] and slow["samples"] >= 5
    pair = timing.paired_ratio(lambda: time.sleep(0.004), lambda: time.sleep(0.001), "cpu",
                               min_time=0.05)
    assert pair["ratio"] > 1.5 and pair["pairs"] >= 7
    assert timing.close(1.0, 1.04) and not timing.close(1.0, 1.06)


def test_gpu_candidates_are_the_plan_models_best_k():
    found = candidates.gpu_candidates("lstm", 16, 12, 64, torch.bfloat16, "h100", k=4)
    assert len(found) == 4
    times = [c["predicted_step_ns"] for c in found]
    assert times == sorted(times)
    plan = plan_fused_rnn("lstm", 16, 12, 64, torch.bfloat16, "h100")
    assert times[0] == pytest.approx(plan.predicted_step_ns)  # the plan is the model's optimum
    for c in found:
        assert c["registers_per_thread"] <= 255 and c["shared_memory_bytes"] <= 227 * 1024


def test_triton_override_replaces_the_plans_tiles():
    plan = plan_fused_rnn("lstm", 16, 12, 64, torch.float32, "h100")
    other = next(c for c in candidates.gpu_candidates("lstm", 16, 12, 64, torch.float32, "h100",
                                                      k=6)
                 if (c["num_warps"], c["num_stages"]) != (plan.num_warps, plan.num_stages))
    config = {f: other[f] for f in candidates.PLAN_FIELDS}
    assert triton_tuned.tuned_plan(plan, "cpu") is plan  # the interpreter runs the plan
    with triton_tuned.override(config):
        tuned = triton_tuned.tuned_plan(plan, "cuda")
    assert (tuned.num_warps, tuned.num_stages, tuned.BB) == (other["num_warps"],
                                                             other["num_stages"], other["BB"])
    assert tuned.grid == (12 * other["programs_per_head"], -(-16 // other["BB"]))
    with pytest.raises(ValueError, match="BH"):
        triton_tuned.apply_entry(plan, {**config, "BH": 48})
    with pytest.raises(ValueError, match="num_warps"):
        triton_tuned.apply_entry(plan, {**config, "num_warps": 3})


def test_workload_parsing():
    assert parse_ops("lstm,GRU") == ["lstm", "gru"]
    assert parse_ops("fused_rnn") == ["lstm", "gru", "slstm", "elman"]
    assert parse_shapes("16x64x128,2x3x4x5", "cpu") == [(16, 64, 1, 128), (2, 3, 4, 5)]
    assert len(parse_shapes("small", "cpu")) == 3
    with pytest.raises(ValueError, match="unknown op"):
        parse_ops("attention")
    with pytest.raises(ValueError, match="BxTxH"):
        parse_shapes("0x4x8", "cpu")


def test_cached_gpu_entry_overrides_the_plan_through_dispatch(tune_cache, monkeypatch):
    from autotune import cache
    from flashseq import tuning
    fake_gpu = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": [9, 0]}
    real = tuning.device_identity
    monkeypatch.setattr(tuning, "device_identity",
                        lambda d: fake_gpu if torch.device(d).type == "cuda" else real(d))
    plan = plan_fused_rnn("lstm", 16, 12, 64, torch.float32, "h100")
    config = {**{f: getattr(plan, f) for f in candidates.PLAN_FIELDS}, "num_stages": 1}
    cache.record(fake_gpu, [{"kernel": triton_tuned.KERNEL, "bucket": triton_tuned.bucket(plan),
                             "dtype": "float32", "config": config}])
    assert plan.num_stages != 1
    assert triton_tuned.tuned_plan(plan, "cuda").num_stages == 1
    monkeypatch.setenv(tuning.ENV, "off")
    assert triton_tuned.tuned_plan(plan, "cuda") is plan
    monkeypatch.setenv(tuning.ENV, "on")
    cache.record(fake_gpu, [{"kernel": triton_tuned.KERNEL, "bucket": triton_tuned.bucket(plan),
                             "dtype": "float32", "config": {**config, "BH": 48}}])
    with pytest.warns(RuntimeWarning, match="ignoring the tuning cache entry"):
        assert triton_tuned.tuned_plan(plan, "cuda") is plan
