"""bench.compare and ``python -m bench compare``: regressions beyond the noise exit 1."""
import pytest

from bench import compare, report
from bench.__main__ import main


def _result(times, iqr=0.0, device="cpu: test"):
    rows = [{"case": case, "provider": "p", "median_ms": t, "min_ms": t, "iqr_ms": iqr,
             "status": "ok"} for case, t in times.items()]
    result = report.make_result("demo", "demo", "cpu", rows)
    result["machine"]["device_name"] = device
    return result


def _write(tmp_path, name, result):
    path = tmp_path / name
    report.write_json(result, path)
    return str(path)


@pytest.mark.parametrize("new_ms, iqr, verdict", [
    (10.5, 0.0, "same"),        # +5 % is under the 10 % threshold
    (12.0, 0.0, "regression"),  # +20 %
    (12.0, 1.5, "same"),        # +20 % but the two IQRs add up to 30 % of the median
    (8.0, 0.0, "faster"),
])
def test_verdicts(new_ms, iqr, verdict):
    rows = compare.compare(_result({"a": 10.0}, iqr), _result({"a": new_ms}, iqr))
    assert [r["verdict"] for r in rows] == [verdict]
    assert rows[0]["ratio"] == pytest.approx(new_ms / 10.0)


def test_untimed_and_unmatched_rows_are_not_compared():
    old = _result({"a": 10.0, "b": 1.0})
    new = _result({"a": 10.0, "c": 1.0})
    new["rows"].append({"case": "b", "provider": "p", "median_ms": None, "min_ms": None,
                        "iqr_ms": None, "status": "skipped: x"})
    assert [r["case"] for r in compare.compare(old, new)] == ["a"]


def test_threshold_must_be_non_negative():
    with pytest.raises(ValueError, match="threshold"):
        compare.compare(_result({"a": 1.0}), _result({"a": 1.0}), threshold=-0.1)


@pytest.mark.parametrize("new_ms, code", [(10.0, 0), (13.0, 1), (7.0, 0)])
def test_cli_exit_codes(tmp_path, capsys, new_ms, code):
    old = _write(tmp_path, "old.json", _result({"a": 10.0, "b": 2.0}))
    new = _write(tmp_path, "new.json", _result({"a": new_ms, "b": 2.0}))
    assert main(["compare", old, new]) == code
    out = capsys.readouterr().out
    assert f"{1 if code else 0} regression(s) in 2 compared case(s)" in out


def test_cli_threshold_option(tmp_path):
    old = _write(tmp_path, "old.json", _result({"a": 10.0}))
    new = _write(tmp_path, "new.json", _result({"a": 13.0}))
    assert main(["compare", old, new, "--threshold", "0.5"]) == 0


def test_cli_nothing_in_common_exits_2(tmp_path, capsys):
    old = _write(tmp_path, "old.json", _result({"a": 10.0}))
    new = _write(tmp_path, "new.json", _result({"b": 10.0}))
    assert main(["compare", old, new]) == 2
    assert "nothing to compare" in capsys.readouterr().out


def test_cli_notes_different_devices(tmp_path, capsys):
    old = _write(tmp_path, "old.json", _result({"a": 10.0}, device="gpu A"))
    new = _write(tmp_path, "new.json", _result({"a": 10.0}, device="gpu B"))
    assert main(["compare", old, new]) == 0
    assert "different devices" in capsys.readouterr().out


def test_cli_bad_file_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "missing.json")
    assert main(["compare", missing, missing]) == 2
    assert "bench compare:" in capsys.readouterr().err
