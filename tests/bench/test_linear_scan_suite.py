"""Suite "linear_scan": runs on the CPU with --tiny, and its smoke check catches a wrong op."""
import torch

import flashseq
from bench.suites import linear_scan


def test_quick_cpu_run_times_both_modes(monkeypatch):
    # one op keeps this quick on a busy machine; every op's call is checked by the smoke test
    monkeypatch.setattr(linear_scan, "OPS", ("gated_delta",))
    rows = linear_scan.run("cpu", quick=True, progress=lambda cases: cases)
    timed = {(r["op"], r["mode"], r["provider"]) for r in rows if r["status"] == "ok"}
    for op in linear_scan.OPS:
        for mode in linear_scan.MODES:
            assert (op, mode, f"flashseq:{op}:torch") in timed
            assert (op, mode, f"flashseq:{op}:reference") in timed


def test_smoke_check_catches_a_wrong_op(monkeypatch):
    for op in linear_scan.OPS:
        assert linear_scan.smoke_status(op, "torch", torch.device("cpu"), torch.float32) is None
    real = flashseq.ops.chunk_gla

    def off_by_a_little(*args, **kwargs):
        o, final = real(*args, **kwargs)
        return o * 1.001, final

    monkeypatch.setattr(flashseq.ops, "chunk_gla", off_by_a_little)
    status = linear_scan.smoke_status("gla", "torch", torch.device("cpu"), torch.float32)
    assert status is not None and status.startswith("failed: smoke check")
