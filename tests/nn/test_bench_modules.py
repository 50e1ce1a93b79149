"""The pieces of the "modules" benchmark suite, run once without timing (the timed run is
``python -m bench modules``)."""
import mmap

import pytest
import torch

from bench.suites import modules
from tests.nn.twins import FALLBACK_WARNING

pytestmark = pytest.mark.filterwarnings(FALLBACK_WARNING)


def test_spread_lengths_cover_one_to_t_unsorted():
    lengths = modules.spread_lengths(16, 64)
    assert lengths.min() == 1 and lengths.max() == 64 and lengths.unique().numel() == 16
    assert not torch.equal(lengths, lengths.sort(descending=True).values)


def test_modules_agree_with_torch_before_timing():
    assert modules.check_modules(torch.device("cpu")) is None


@pytest.mark.parametrize("kind", modules.KINDS)
@pytest.mark.parametrize("layout", modules.LAYOUTS)
@pytest.mark.parametrize("mode", modules.MODES)
def test_timed_calls_run_and_agree(kind, layout, mode):
    case = modules.ModuleCase(kind, 4, 6, 8, layout, mode, torch.device("cpu"))
    ref, ours = modules.make_modules(case)
    results = [modules.timed_call(m, case)() for m in (ref, ours)]
    if mode == "fwd":  # (output, states): compare the output (PackedSequence data if packed)
        results = [[r[0].data if layout == "packed" else r[0]] for r in results]
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_cases_hold_the_issue_shapes_both_kinds_and_modes():
    cases = modules.cases(torch.device("cpu"), quick=False)
    padded = {(c.input_size, c.H, c.B, c.T, c.layers) for c in cases if c.layout == "padded"}
    assert padded == {(200, 200, 20, 35, 2), (64, 256, 32, 200, 2), (512, 512, 16, 128, 1),
                      (128, 128, 16, 512, 1), (256, 256, 1, 256, 1), (1024, 1024, 8, 64, 1)}
    assert {(c.kind, c.mode) for c in cases} == {(k, m) for k in modules.KINDS for m in modules.MODES}
    assert len({c.name for c in cases}) == len(cases)


def test_paired_row_is_a_paired_ratio_against_torch(monkeypatch):
    calls = []

    def fake_measure_ratio(fn, baseline, *, device, min_run_time, cpu_time=False):
        calls.append((fn, baseline))
        return {"ratio": 0.8, "ratio_iqr": 0.05, "pairs": 7, "fn_ms": 4.0, "baseline_ms": 5.0}

    monkeypatch.setattr(modules.timing, "measure_ratio", fake_measure_ratio)
    case = modules.ModuleCase("lstm", 4, 6, 8, "padded", "fwd", torch.device("cpu"), I=5, layers=2)
    row = modules.paired_row(case, 1, min_run_time=0.01)
    assert len(calls) == 1  # one alternating measurement, not two separate medians
    assert row["ratio"] == 0.8 and row["paired_iqr"] == 0.05 and row["pairs"] == 7
    assert row["median_ms"] == 4.0 and row["torch_ms"] == 5.0 and row["status"] == "ok"
    assert row["provider"] == "flashseq.LSTM @1T" and row["threads"] == 1
    assert "I=5 H=8 B=4 T=6 L=2 padded" in row["case"]
    assert row["faults"] >= 0 and row["torch_faults"] >= 0  # counted on real calls, after pairs


def test_minor_faults_count_a_fresh_mapping():
    pytest.importorskip("resource", reason="page-fault counts need the Unix resource module")
    # a fresh 8 MB anonymous mapping in 4 KB pages (no huge pages), touched page by page
    def touch():
        with mmap.mmap(-1, 8 << 20) as m:
            if hasattr(mmap, "MADV_NOHUGEPAGE"):
                m.madvise(mmap.MADV_NOHUGEPAGE)
            for i in range(0, len(m), 4096):
                m[i] = 1
    assert modules.minor_faults_per_call(touch) > 1000
    assert modules.minor_faults_per_call(lambda: None) < 100


@pytest.mark.parametrize("layout", modules.LAYOUTS)
def test_suite_rows_run_tiny(layout, monkeypatch):
    monkeypatch.setenv("FLASHSEQ_BENCH_THREADS", "1")
    case = modules.ModuleCase("gru", 4, 6, 8, layout, "fwd+bwd", torch.device("cpu"))
    row = (modules.paired_row if layout == "padded" else modules.packed_row)(case, 1, 0.01)
    assert row["status"] == "ok", row
    value = row["ratio"] if layout == "padded" else row["ratio_packed_paired"]
    assert 0.01 < value < 100.0


def test_thread_counts_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLASHSEQ_BENCH_THREADS", "2,1")
    assert modules.thread_counts() == (2, 1)
    monkeypatch.setenv("FLASHSEQ_BENCH_THREADS", "two")
    with pytest.raises(ValueError, match="FLASHSEQ_BENCH_THREADS"):
        modules.thread_counts()


def test_cpu_clock_only_at_one_thread_when_asked(monkeypatch):
    calls = []

    def fake_measure_ratio(fn, baseline, *, device, min_run_time, cpu_time=False):
        calls.append(cpu_time)
        return {"ratio": 1.0, "ratio_iqr": 0.0, "pairs": 5, "fn_ms": 1.0, "baseline_ms": 1.0}

    monkeypatch.setattr(modules.timing, "measure_ratio", fake_measure_ratio)
    case = modules.ModuleCase("lstm", 2, 3, 4, "padded", "fwd", torch.device("cpu"))
    monkeypatch.setenv("FLASHSEQ_BENCH_CPU_TIME", "1")
    rows = [modules.paired_row(case, 1, 0.01), modules.paired_row(case, 2, 0.01)]
    monkeypatch.delenv("FLASHSEQ_BENCH_CPU_TIME")
    rows.append(modules.paired_row(case, 1, 0.01))
    assert calls == [True, False, False]
    assert [r["clock"] for r in rows] == ["cpu", "wall", "wall"]
