"""``python -m bench`` on bad input: a malformed result file makes ``compare`` exit 2 (bad input)
with one line on stderr, never 1 (which CI reads as a regression); an output path that cannot be
written stops the run before the suite starts."""
import json
import subprocess
import sys
import types

import pytest

from bench import report
from bench.__main__ import main


def _result(rows=None):
    if rows is None:
        rows = [{"case": "a", "provider": "p", "median_ms": 10.0, "min_ms": 9.0, "iqr_ms": 0.1,
                 "status": "ok"}]
    return report.make_result("demo", "demo", "cpu", rows)


def _write(tmp_path, name, document):
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def _without(document, key):
    return {k: v for k, v in document.items() if k != key}


def _row(**changes):
    row = {"case": "a", "provider": "p", "median_ms": 10.0, "min_ms": 9.0, "iqr_ms": 0.1}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()

MALFORMED = {
    "no suite": lambda: _without(_result(), "suite"),
    "no machine": lambda: _without(_result(), "machine"),
    "machine a string": lambda: dict(_result(), machine="gpu"),
    "rows an object": lambda: dict(_result(), rows={"case": "a"}),
    "row a list": lambda: _result([["a", "p", 10.0]]),
    "row a string": lambda: _result(["a"]),
    "row without case": lambda: _result([_row(case=_DROP)]),
    "row without provider": lambda: _result([_row(provider=_DROP)]),
    "row without median_ms": lambda: _result([_row(median_ms=_DROP)]),
    "case a list": lambda: _result([_row(case=["a"])]),
    "median_ms a string": lambda: _result([_row(median_ms="10")]),
    "median_ms a bool": lambda: _result([_row(median_ms=True)]),
    "median_ms negative": lambda: _result([_row(median_ms=-1.0)]),
    "iqr_ms a string": lambda: _result([_row(iqr_ms="0.1")]),
    "iqr_ms a list": lambda: _result([_row(iqr_ms=[0.1])]),
}


@pytest.mark.parametrize("which", ["old", "new"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_compare_malformed_result_exits_2_with_one_line(tmp_path, capsys, case, which):
    good = _write(tmp_path, "good.json", _result())
    bad = _write(tmp_path, "bad.json", MALFORMED[case]())
    args = ["compare", good, bad] if which == "new" else ["compare", bad, good]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench compare: ") and "bad.json" in lines[0], \
        captured.err
    assert "regression" not in captured.out


def test_compare_non_finite_time_exits_2(tmp_path, capsys):
    """JSON as Python reads it accepts NaN and Infinity; no writer of ours produces them."""
    good = _write(tmp_path, "good.json", _result())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_result()).replace("10.0", "Infinity"), encoding="utf-8")
    assert main(["compare", good, str(bad)]) == 2
    assert "median_ms" in capsys.readouterr().err


def test_compare_malformed_exits_2_from_the_command_line(tmp_path):
    """The real CLI: exit status 2 and one line on stderr, no traceback."""
    good = _write(tmp_path, "good.json", _result())
    bad = _write(tmp_path, "bad.json", _without(_result(), "suite"))
    done = subprocess.run([sys.executable, "-m", "bench", "compare", good, bad],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"bench compare: {bad}: missing key 'suite'"]


@pytest.fixture
def suite_that_must_not_run(monkeypatch):
    """A registered suite whose run fails the test: output paths are checked before it."""
    ran = []

    def run(device, quick, progress):
        ran.append(True)
        return []

    fake = types.SimpleNamespace(DESCRIPTION="fake", run=run)
    monkeypatch.setattr("bench.__main__.load", lambda name: fake)
    return ran


def _unwritable_paths(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {
        "parent is a file": str(a_file / "out.json"),
        "ancestor is a file": str(a_file / "deeper" / "out.json"),
        "path is a folder": str(folder),
    }


@pytest.mark.parametrize("option", ["--json", "--md", "--png"])
@pytest.mark.parametrize("kind", ["parent is a file", "ancestor is a file", "path is a folder"])
def test_unwritable_output_path_stops_before_the_suite(tmp_path, capsys, suite_that_must_not_run,
                                                       option, kind):
    path = _unwritable_paths(tmp_path)[kind]
    assert main(["quick", "--no-progress", option, path]) == 2
    assert suite_that_must_not_run == [], "the suite ran before the output path was checked"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench: {option} {path}: "), err


def test_writable_output_paths_are_left_alone(tmp_path):
    """A missing parent folder is fine (the writers create it), and the check leaves no file
    behind; an existing file is not truncated by the check."""
    existing = tmp_path / "old.md"
    existing.write_text("keep me")
    from bench.outputs import check_outputs
    options = {"--json": str(tmp_path / "new" / "sub" / "out.json"), "--md": str(existing),
               "--png": None}
    assert check_outputs(options) is None
    assert not (tmp_path / "new").exists()
    assert existing.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.md"]
