"""The pieces of the "modules" benchmark suite, run once without timing (the timed run is
``python -m bench modules``)."""
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


def test_packed_over_padded_ratio_pairs_rows_by_provider():
    rows = [{"case": "lstm B=16 T=64 H=128 padded float32 fwd", "provider": p, "median_ms": m}
            for p, m in (("a", 2.0), ("b", 4.0))]
    rows += [{"case": "lstm B=16 T=64 H=128 packed float32 fwd", "provider": p, "median_ms": m,
              "status": "ok"} for p, m in (("a", 2.2), ("b", 40.0))]
    packed_a = ("lstm B=16 T=64 H=128 packed float32 fwd", "a")
    out = modules.add_packed_over_padded(rows, {packed_a: 0.9})
    assert [r["ratio_packed"] for r in out] == [None, None, pytest.approx(1.1), pytest.approx(10.0)]
    assert [r["ratio_packed_paired"] for r in out] == [None, None, 0.9, None]
    assert list(out[2])[-1] == "status"


def test_paired_ratio_times_packed_against_padded():
    case = modules.ModuleCase("gru", 4, 6, 8, "packed", "fwd+bwd", torch.device("cpu"))
    _, ours = modules.make_modules(case)
    ratio = modules.paired_packed_ratio(ours, case, min_run_time=0.01)
    assert 0.05 < ratio < 20.0
