"""The microbench suite and its regression check: ``python -m bench microbench [--compare]`` and
``python -m bench compare`` on microbench results (planted 2x regression, identical files, exit
codes), the JSON it writes, and the committed CPU baseline."""
import json
import pathlib
import time

import pytest

from bench import compare, report
from bench.__main__ import main
from bench.suites import microbench
from bench.timing import measure_ratio, median_interval

REPO = pathlib.Path(__file__).resolve().parents[2]
BASELINE = REPO / "bench" / "results" / "cpu" / "microbench.json"
ROW_KEYS = ("case", "provider", "median_ms", "family", "mode", "baseline", "baseline_ms", "ratio",
            "median_ci", "paired_iqr", "pairs", "clock", "attempts", "load1", "run_ratios",
            "run_spread", "margin", "status")


def _row(case, ratio, margin=None, ci=0.01):
    return {"case": case, "provider": "flashseq:cpu", "median_ms": ratio, "min_ms": None,
            "iqr_ms": None, "family": "fused_rnn", "mode": "fwd", "baseline": "torch.nn.LSTM",
            "baseline_ms": 1.0, "ratio": ratio, "median_ci": ci, "paired_iqr": 0.05, "pairs": 50,
            "load1": 1.0, "run_ratios": [ratio], "run_spread": None, "margin": margin,
            "status": "ok"}


def _result(ratios, margin=None, ci=0.01):
    rows = [_row(case, r, margin, ci) for case, r in ratios.items()]
    result = report.make_result("microbench", microbench.DESCRIPTION, "cpu", rows)
    result["compare"] = dict(microbench.COMPARE)
    return result


def _write(tmp_path, name, result):
    path = tmp_path / name
    report.write_json(result, path)
    return str(path)


def test_median_interval_brackets_the_median():
    assert median_interval([3.0]) == (3.0, 3.0)
    assert median_interval(list(range(100))) == (39, 60)  # ranks 40 and 61 of 100 (1-based)
    low, high = median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert low <= 3.0 <= high
    with pytest.raises(ValueError, match="values"):
        median_interval([])


def _spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_measure_ratio_in_cpu_time_ignores_waiting():
    # fn sleeps (no CPU), the baseline computes: only CPU time makes fn the cheaper one
    sleeper, worker = (lambda: time.sleep(0.003)), (lambda: _spin(0.001))
    wall = measure_ratio(sleeper, worker, device="cpu", min_run_time=0.02)
    cpu = measure_ratio(sleeper, worker, device="cpu", min_run_time=0.02, cpu_time=True)
    assert wall["ratio"] > 1.5 and cpu["ratio"] < 0.5
    assert len(cpu["pair_ms"]) == cpu["pairs"] and cpu["ratio_ci"][0] <= cpu["ratio"]
    with pytest.raises(ValueError, match="cpu_time"):
        measure_ratio(sleeper, worker, device="cuda", cpu_time=True)


def test_cases_cover_every_family_and_mode():
    names = [c.name for c in microbench.cases(tiny=False)]
    assert len(names) == len(set(names)) == 2 * (4 + 3 + 4)
    kinds = {(c.family, c.kind) for c in microbench.cases(tiny=False)}
    assert {k for f, k in kinds if f == "fused_rnn"} == {"lstm", "gru", "elman", "slstm"}
    assert {k for f, k in kinds if f == "linear_scan"} == {"chunk_gla", "chunk_delta_rule",
                                                           "chunk_mlstm"}
    assert {k for f, k in kinds if f == "modules"} == {"LSTM", "GRU", "RNN", "sLSTM"}


@pytest.mark.parametrize("spread, margin", [
    (None, microbench.MARGIN_FLOOR), (0.0, microbench.MARGIN_FLOOR),
    (0.1, 0.1 * microbench.SAFETY), (1.0, microbench.MARGIN_CAP)])
def test_margin_from_spread(spread, margin):
    assert microbench.margin_from_spread(spread) == pytest.approx(margin)


def test_margin_cap_always_reports_a_2x_slowdown():
    assert 1.0 + microbench.MARGIN_CAP < 2.0
    assert microbench.COMPARE["max_allowance"] == microbench.MARGIN_CAP


def test_merge_runs_keeps_median_spread_and_margin():
    runs = [[_row("a", r), _row("b", 1.0)] for r in (1.0, 1.2, 0.9)]
    runs[1][1] = {**_row("b", None), "status": "failed: boom"}
    merged = microbench.merge_runs(runs)
    a, b = merged
    assert a["ratio"] == pytest.approx(1.0) and a["run_ratios"] == [1.0, 1.2, 0.9]
    assert a["run_spread"] == pytest.approx(0.3)
    assert a["margin"] == pytest.approx(microbench.margin_from_spread(0.3))
    assert b["status"] == "failed: boom" and b["margin"] is None
    single = microbench.merge_runs([[_row("a", 1.0)]])[0]
    assert single["run_spread"] is None and single["margin"] is None
    with pytest.raises(ValueError, match="runs"):
        microbench.merge_runs([])


def test_compare_flags_a_planted_2x_regression(tmp_path, capsys):
    # the widest allowance a baseline can carry (its margin and both intervals at the cap)
    old = _write(tmp_path, "old.json", _result({"a": 0.8, "b": 1.5}, margin=0.75, ci=2.0))
    new = _write(tmp_path, "new.json", _result({"a": 1.6, "b": 1.5}, ci=2.0))
    assert main(["compare", old, new]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s) in 2 compared case(s)" in out
    assert "regression: a (flashseq:cpu): 2.00x the baseline's ratio" in out


def test_compare_reads_the_ratio_not_the_time(tmp_path):
    # a machine twice as slow doubles both sides' times; the ratio, and so the verdict, holds
    old, new = _result({"a": 0.8}), _result({"a": 0.8})
    for row in new["rows"]:
        row["median_ms"], row["baseline_ms"] = 2 * row["median_ms"], 2 * row["baseline_ms"]
    assert main(["compare", _write(tmp_path, "old.json", old),
                 _write(tmp_path, "new.json", new)]) == 0


def test_compare_passes_identical_files(tmp_path, capsys):
    path = _write(tmp_path, "same.json", _result({"a": 0.8, "b": 1.5}, margin=0.25))
    assert main(["compare", path, path]) == 0
    assert "0 regression(s) in 2 compared case(s)" in capsys.readouterr().out


@pytest.mark.parametrize("new_ratio, margin, verdict", [
    (1.2, 0.25, "same"),        # +20 % is inside the baseline's margin
    (1.3, 0.25, "regression"),  # +30 % is not
    (1.3, None, "regression"),  # no margin: the 10 % threshold
    (0.7, 0.25, "faster"),
])
def test_compare_uses_ratio_and_the_baselines_margin(new_ratio, margin, verdict):
    rows = compare.compare(_result({"a": 1.0}, margin=margin), _result({"a": new_ratio}))
    assert [r["verdict"] for r in rows] == [verdict]
    assert rows[0]["old_ratio"] == 1.0 and rows[0]["new_ratio"] == new_ratio


def test_compare_rejects_a_malformed_compare_spec(tmp_path, capsys):
    bad = _result({"a": 1.0})
    bad["compare"]["max_allowance"] = "wide"
    path = _write(tmp_path, "bad.json", bad)
    assert main(["compare", path, path]) == 2
    assert "max_allowance" in capsys.readouterr().err


@pytest.fixture
def two_cases(monkeypatch):
    """Only two cheap cases, timed briefly: these tests check the plumbing, not speed."""
    picked = [c for c in microbench.cases(tiny=True)
              if c.name.startswith(("fused_rnn gru", "modules GRU")) and c.mode == "fwd"]
    monkeypatch.setattr(microbench, "cases", lambda tiny: picked)
    monkeypatch.setattr(microbench, "TINY_MIN_RUN_TIME_S", 0.1)
    return picked


def test_tiny_run_writes_the_schema(tmp_path):
    out = tmp_path / "mb.json"
    assert main(["microbench", "--tiny", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    compare.check_result(result, out)
    assert result["suite"] == "microbench"
    assert result["compare"] == microbench.COMPARE
    cond = result["conditions"]
    assert cond["torch_threads"] == microbench.DEFAULT_CPU_THREADS and cond["runs"] == 1
    assert cond["wall_s"] > 0 and len(cond["load_average_before"]) == 3
    assert [r["case"] for r in result["rows"]] == [c.name for c in microbench.cases(tiny=True)]
    for row in result["rows"]:
        assert all(k in row for k in ROW_KEYS) and list(row)[-1] == "status", row
        assert row["status"] == "ok", row
        assert row["ratio"] > 0 and row["median_ms"] > 0 and row["baseline_ms"] > 0
        assert row["pairs"] >= microbench.ROUNDS * 3 and row["median_ci"] >= 0
        assert row["clock"] == "cpu"  # one thread: CPU time of the process


def test_compare_run_flags_a_planted_slowdown(tmp_path, monkeypatch, two_cases, capsys):
    base = str(tmp_path / "base.json")
    assert main(["microbench", "--tiny", "--no-progress", "--runs", "2", "--json", base]) == 0
    rows = json.loads(pathlib.Path(base).read_text())["rows"]
    assert all(r["margin"] is not None and len(r["run_ratios"]) == 2 for r in rows)
    capsys.readouterr()
    slow_case = two_cases[0].name
    build = microbench.build

    def slower_build(case, device, seed=0):
        ours, baseline = build(case, device, seed)
        if case.name != slow_case:
            return ours, baseline
        # three calls, not two: far beyond the noise of tiny cases on a busy machine
        return (lambda: (ours(), ours(), ours())), baseline

    monkeypatch.setattr(microbench, "build", slower_build)
    assert main(["microbench", "--tiny", "--no-progress", "--compare", base]) == 1
    out = capsys.readouterr().out
    assert f"regression: {slow_case} (flashseq:cpu)" in out
    # the suspect was timed again RETRIES times before it was called a regression
    assert f"timing them again ({microbench.RETRIES}/{microbench.RETRIES})" in out


def test_retime_keeps_the_best_attempt(monkeypatch, two_cases):
    case = two_cases[0]
    row = {**microbench._empty_row(case, "cpu"), "ratio": 2.0, "margin": 0.3, "status": "ok"}
    other = {**microbench._empty_row(two_cases[1], "cpu"), "ratio": 1.0, "status": "ok"}
    again = iter([0.9, 1.5])

    def fake_time_cases(work, device, min_run_time, statuses, progress):
        assert [c.name for c in work] == [case.name]
        return [{**row, "ratio": next(again), "margin": None}]

    monkeypatch.setattr(microbench, "time_cases", fake_time_cases)
    rows = microbench.retime([row, other], {case.name}, "cpu", True, lambda x: x)
    assert rows[0]["ratio"] == 0.9 and rows[0]["attempts"] == [2.0, 0.9]
    assert rows[0]["margin"] == 0.3 and rows[1] is other
    rows = microbench.retime(rows, {case.name}, "cpu", True, lambda x: x)
    assert rows[0]["ratio"] == 0.9 and rows[0]["attempts"] == [2.0, 0.9, 1.5]


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"format": "other"})])
def test_bad_compare_file_exits_2_before_running(tmp_path, monkeypatch, capsys, content):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the suite ran although --compare is unusable")

    monkeypatch.setattr(microbench, "run", must_not_run)
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    assert main(["microbench", "--compare", str(path)]) == 2
    assert "bench:" in capsys.readouterr().err


def test_runs_needs_a_suite_that_merges(capsys):
    assert main(["quick", "--runs", "2"]) == 2
    assert "--runs" in capsys.readouterr().err


def test_missing_cpu_extension_skips_instead_of_crashing(tmp_path, monkeypatch, two_cases,
                                                         capsys):
    from flashseq.kernels.fused_rnn import backends

    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda name, device: "no compiler here" if name == "cpu"
                        else real(name, device))
    baseline = _result({c.name: 1.0 for c in two_cases})
    for row, case in zip(baseline["rows"], two_cases):
        row["provider"] = microbench.provider(case, "cpu")
    base = _write(tmp_path, "base.json", baseline)
    code = main(["microbench", "--tiny", "--no-progress", "--compare", base])
    out = capsys.readouterr().out
    assert f"{two_cases[0].name}: skipped: no compiler here" in out
    assert f"note: not compared: {two_cases[0].name}" in out
    assert code in (0, 1)  # the other case is compared against a made-up baseline


def test_committed_baseline_covers_every_case_with_a_margin():
    result = report.load_json(BASELINE)
    compare.check_result(result, BASELINE)
    assert result["suite"] == "microbench" and result["compare"] == microbench.COMPARE
    assert result["conditions"]["runs"] >= 3
    assert result["conditions"]["load_average_before"] is not None
    rows = {r["case"]: r for r in result["rows"]}
    for case in microbench.cases(tiny=False):
        row = rows[case.name]
        assert row["status"] == "ok", row
        assert microbench.MARGIN_FLOOR <= row["margin"] <= microbench.MARGIN_CAP
        assert row["margin"] == pytest.approx(microbench.margin_from_spread(row["run_spread"]))
