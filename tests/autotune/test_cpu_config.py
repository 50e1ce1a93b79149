"""The CPU loop's tunable config: a cached config changes what the loop runs (seen through the
debug hook, which reads the knobs back from the extension during the call), FLASHSEQ_TUNING=off
ignores it, results stay those of the reference, the candidate model ranks the knobs."""
import pytest
import torch

from autotune import cache
from flashseq import _jit, tuning
from flashseq.kernels.fused_rnn import cpu_config, fused_rnn
from flashseq.kernels.fused_rnn.cpu_config import CpuConfig

pytestmark = pytest.mark.skipif(_jit.extension_error() is not None,
                                reason="the compiled CPU loop is not available here")

B, T, NH, DH = 3, 5, 2, 8
TUNED = {"step_gemm_max_batch": 0, "avx512_tile": False, "threads": 1}


def _inputs(cell="lstm", grad=False):
    g = torch.Generator().manual_seed(1)
    G = 4 if cell == "lstm" else 3
    wx = torch.randn(B, T, G, NH, DH, generator=g, requires_grad=grad)
    r = (torch.randn(G, NH, DH, DH, generator=g) * 0.3).requires_grad_(grad)
    b = torch.randn(G, NH, DH, generator=g).requires_grad_(grad)
    return wx, r, b


def _record(config, cell="lstm"):
    bucket = cpu_config.bucket(cell, B, NH, DH)
    cache.record(tuning.device_identity("cpu"), [{"kernel": cpu_config.KERNEL, "bucket": bucket,
                                                  "dtype": "float32", "config": config}])


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _knobs_now():
    ext = _jit.extension()
    batch = ext._set_step_gemm_max_batch(0)
    ext._set_step_gemm_max_batch(batch)
    return batch, bool(ext._uses_avx512_tile()), torch.get_num_threads()


def test_cached_config_changes_what_the_cpu_loop_runs(tune_cache):
    wx, r, b = _inputs()
    before = _knobs_now()
    h_default, _ = fused_rnn(wx, r, b, cell="lstm", backend="cpu")
    untuned = cpu_config.last_run()
    assert untuned.source == "default" and untuned.config == cpu_config.DEFAULT
    assert untuned.step_gemm_max_batch == cpu_config.BUILTIN_MAX_BATCH

    _record(TUNED)
    h_tuned, _ = fused_rnn(wx, r, b, cell="lstm", backend="cpu")
    tuned = cpu_config.last_run()
    assert tuned.source == "cache" and tuned.config == CpuConfig(**TUNED)
    # what the extension itself had in effect during the call
    assert tuned.step_gemm_max_batch == 0 and tuned.avx512_tile is False and tuned.threads == 1
    assert _knobs_now() == before  # restored after the call
    ref, _ = fused_rnn(wx.double(), r.double(), b.double(), cell="lstm", backend="reference")
    assert _rel(h_tuned, ref) <= 1e-5 and _rel(h_default, ref) <= 1e-5


def test_cached_config_also_drives_the_backward(tune_cache):
    _record(TUNED)
    wx, r, b = _inputs(grad=True)
    h, _ = fused_rnn(wx, r, b, cell="lstm", backend="cpu")
    counts = cpu_config.call_counts()
    h.backward(torch.randn_like(h))
    assert cpu_config.call_counts()["cache"] == counts["cache"] + 1
    assert cpu_config.last_run().step_gemm_max_batch == 0
    assert torch.isfinite(wx.grad).all() and torch.isfinite(r.grad).all()


def test_tuning_off_ignores_the_cached_config(tune_cache, monkeypatch):
    _record(TUNED)
    monkeypatch.setenv(tuning.ENV, "off")
    fused_rnn(*_inputs(), cell="lstm", backend="cpu")
    run = cpu_config.last_run()
    assert run.source == "default" and run.step_gemm_max_batch == cpu_config.BUILTIN_MAX_BATCH


def test_other_buckets_do_not_use_the_entry(tune_cache):
    _record(TUNED)
    wx, r, b = _inputs("gru")
    fused_rnn(wx, r, b, cell="gru", backend="cpu")
    assert cpu_config.last_run().source == "default"


def test_invalid_cached_config_warns_once_and_runs_the_default(tune_cache):
    _record({"threads": 0})
    with pytest.warns(RuntimeWarning, match="ignoring a tuning cache entry"):
        fused_rnn(*_inputs(), cell="lstm", backend="cpu")
    assert cpu_config.last_run().source == "default"


def test_override_beats_the_cache(tune_cache):
    _record(TUNED)
    with cpu_config.override(CpuConfig(avx512_tile=False)):
        fused_rnn(*_inputs(), cell="lstm", backend="cpu")
    run = cpu_config.last_run()
    assert run.source == "override" and run.step_gemm_max_batch == cpu_config.BUILTIN_MAX_BATCH


@pytest.mark.parametrize("bad, error", [(dict(threads=0), ValueError),
                                        (dict(step_gemm_max_batch=-1), ValueError),
                                        (dict(threads=1.5), TypeError),
                                        (dict(avx512_tile="yes"), TypeError)])
def test_config_checks_its_fields(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        CpuConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        CpuConfig.from_json({"panel": 3})


def test_candidates_are_the_models_best_by_estimate():
    found = cpu_config.candidates("lstm", 16, 1, 128, torch.float32, k=20, threads=2)
    estimates = [e for _, e in found]
    assert estimates == sorted(estimates)
    configs = [c for c, _ in found]
    assert len(set(configs)) == len(configs)
    # a knob set to what the loop does anyway stays None: the default is one candidate, once
    assert cpu_config.DEFAULT in configs
    assert {c.step_gemm_max_batch for c in configs} == {0, None}
    assert {c.threads for c in configs} == {1, None}
    # the AVX-512 knob exists only for float32 on a CPU and build that have the tile
    assert {c.avx512_tile for c in configs} == ({False, None} if cpu_config.avx512_available(
        torch.float32) else {None})
    f64 = cpu_config.candidates("lstm", 16, 1, 128, torch.float64, k=20, threads=2)
    assert {c.avx512_tile for c, _ in f64} == {None} and len(f64) == 4
    # a bucket above the built-in crossover gets an explicit one covering the bucket
    big = cpu_config.candidates("gru", 200, 1, 64, torch.float32, k=20, threads=1)
    assert {c.step_gemm_max_batch for c, _ in big} == {0, 256}
    # k limits the list to the best k
    assert [c for c, _ in cpu_config.candidates("lstm", 16, 1, 128, torch.float32, k=3,
                                               threads=2)] == configs[:3]
