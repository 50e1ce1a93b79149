"""bench.report: the JSON and Markdown a run writes."""
import json
import math
import socket

import pytest

from bench import report

ROWS = [
    {"case": "lstm B=1", "provider": "flashseq:cpu", "median_ms": 1.25, "min_ms": 1.0,
     "iqr_ms": 0.1, "runs": 9, "mode": "fwd", "ratio": 0.5, "status": "ok"},
    {"case": "lstm B=1", "provider": "flashseq:triton", "median_ms": None, "min_ms": None,
     "iqr_ms": None, "mode": "fwd", "ratio": None, "status": "skipped: no | GPU"},
    {"case": "lstm B=1", "provider": "torch.nn.LSTM", "median_ms": 2.5, "min_ms": 2.0,
     "iqr_ms": float("nan"), "runs": 9, "mode": "fwd", "ratio": 1.0, "status": "ok"},
]


@pytest.fixture
def result():
    return report.make_result("demo", "a demo suite", "cpu", [dict(r) for r in ROWS])


def test_result_records_machine_and_command(result):
    m = result["machine"]
    for key in ("platform", "cpu", "cpu_count", "device", "device_name", "python", "torch",
                "triton", "flashseq_commit", "tree_dirty"):
        assert key in m, key
    assert m["device"] == "cpu" and m["device_name"].startswith("cpu: ")
    assert result["suite"] == "demo" and result["format"] == report.FORMAT
    assert result["timestamp_utc"].endswith("+00:00")
    assert isinstance(result["command"], str) and result["command"]


def test_json_round_trip_is_standard_json(result, tmp_path):
    path = tmp_path / "sub" / "out.json"
    report.write_json(result, path)
    text = path.read_text()
    assert "NaN" not in text  # a NaN would make the file unreadable for strict JSON parsers
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    loaded = report.load_json(path)
    assert loaded["rows"][0] == ROWS[0]
    assert loaded["rows"][2]["iqr_ms"] is None
    assert math.isclose(loaded["rows"][2]["median_ms"], 2.5)


def test_json_has_no_host_name(result, tmp_path):
    host = socket.gethostname()
    path = tmp_path / "out.json"
    report.write_json(result, path)
    if len(host) >= 4:
        assert host not in path.read_text()


def test_load_json_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a flashseq benchmark result"):
        report.load_json(bad)
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_json(bad)


def test_markdown_table_columns_and_cells(result, tmp_path):
    path = tmp_path / "out.md"
    report.write_markdown(result, path)
    text = path.read_text()
    assert text.startswith("# bench: demo")
    header = "| case | provider | median_ms | min_ms | iqr_ms | runs | mode | ratio | status |"
    assert header in text
    assert "| lstm B=1 | flashseq:cpu | 1.25 | 1 | 0.1 | 9 | fwd | 0.5 | ok |" in text
    assert "skipped: no \\| GPU" in text  # a '|' in a cell must not split the table
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(ROWS)
    assert all(line.count(" | ") == header.count(" | ") for line in table_lines if "---" not in line)


def test_markdown_summarises_ratios(result):
    text = report.markdown(result)
    assert "- ratio of flashseq:cpu: geometric mean 0.5, best 0.5, worst 0.5 (lstm B=1)" in text
    assert "ratio of torch.nn.LSTM" not in text  # the baseline is not summarised
