"""bench.runner: one row per provider, with what happened in "status"."""
import pytest
import torch

from bench import runner


def _ok(data):
    x = torch.randn(8, 8)
    return lambda: x @ x


def _unsupported(data):
    raise NotImplementedError("DH=7 is not served")


def _crash(data):
    raise RuntimeError("boom\nsecond line")


@pytest.fixture
def rows():
    providers = [
        runner.Provider("ours-ok", _ok),
        runner.Provider("ours-unsupported", _unsupported),
        runner.Provider("ours-crash", _crash),
        runner.Provider("peer-crash", _crash, peer=True),
        runner.Provider("ours-prechecked", _ok, status="failed: smoke check: h rel err 1e-1"),
        runner.Provider("base", _ok, peer=True),
    ]
    return runner.time_case("c", None, providers, device="cpu", min_run_time=0.01,
                            extra={"mode": "fwd"})


def test_statuses(rows):
    status = {r["provider"]: r["status"] for r in rows}
    assert status == {
        "ours-ok": "ok",
        "ours-unsupported": "skipped: NotImplementedError: DH=7 is not served",
        "ours-crash": "failed: RuntimeError: boom",
        "peer-crash": "skipped: RuntimeError: boom",
        "ours-prechecked": "failed: smoke check: h rel err 1e-1",
        "base": "ok",
    }


def test_only_ok_rows_have_times(rows):
    for r in rows:
        assert r["case"] == "c" and r["mode"] == "fwd"
        timed = r["status"] == "ok"
        for key in ("median_ms", "min_ms", "iqr_ms"):
            assert (r[key] is not None) == timed, (r["provider"], key)
        if timed:
            assert 0 < r["min_ms"] <= r["median_ms"]


def test_failures_are_ours_only(rows):
    assert [r["provider"] for r in runner.failures(rows)] == ["ours-crash", "ours-prechecked"]


def test_ratios_against_baseline(rows):
    runner.add_ratios(rows, "base")
    by = {r["provider"]: r for r in rows}
    assert by["base"]["ratio"] == 1.0
    assert by["ours-ok"]["ratio"] == pytest.approx(by["ours-ok"]["median_ms"] / by["base"]["median_ms"])
    assert by["ours-crash"]["ratio"] is None
    assert list(by["ours-ok"])[-2:] == ["ratio", "status"]  # status stays the last column
