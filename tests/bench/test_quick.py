"""``python -m bench quick``: one CPU thread unless told, a summary with spreads above the table,
a warning when a spread is large against its median; ``--tiny`` is the small-size flag."""
import pytest
import torch

from bench.__main__ import main
from bench.suites import quick


def _row(provider, mode, median, iqr, ratio=None, status="ok"):
    return {"case": f"lstm {mode}", "provider": provider, "median_ms": median, "min_ms": median,
            "iqr_ms": iqr, "mode": mode, "ratio": ratio, "status": status}


CALM = [_row("flashseq:cpu", "fwd", 1.0, 0.05, 0.8), _row("torch.nn.LSTM", "fwd", 1.25, 0.05, 1.0),
        _row("flashseq:cuda", "fwd", None, None, status="skipped: no CUDA device")]


@pytest.fixture
def canned_run(monkeypatch):
    """quick.run replaced by one that records torch's thread count and returns fixed rows."""
    seen = {}

    def run(device, tiny, progress):
        seen["threads"], seen["tiny"] = torch.get_num_threads(), tiny
        return [dict(r) for r in seen.get("rows", CALM)]

    monkeypatch.setattr(quick, "run", run)
    return seen


def test_one_thread_by_default_and_restored_after(canned_run):
    before = torch.get_num_threads()
    assert main(["quick", "--tiny", "--no-progress"]) == 0
    assert canned_run == {"threads": 1, "tiny": True}
    assert torch.get_num_threads() == before


def test_threads_flag(canned_run):
    assert main(["quick", "--threads", "2", "--no-progress"]) == 0
    assert canned_run["threads"] == 2 and canned_run["tiny"] is False


def test_bad_threads_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quick", "--threads", "0"])
    assert exc.value.code == 2 and "--threads" in capsys.readouterr().err


def test_summary_above_the_table_with_spreads(canned_run, capsys):
    assert main(["quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.index("threads: 1") < out.index("fwd: ") < out.index("# bench: quick")
    fwd = next(line for line in out.splitlines() if line.startswith("fwd: "))
    assert "flashseq:cpu 1 ms (spread 0.05 ms, 0.80x torch's time)" in fwd
    assert "torch.nn.LSTM 1.25 ms (spread 0.05 ms)" in fwd
    assert "flashseq:cuda: skipped: no CUDA device" in out
    assert "warning" not in out


def test_large_spread_warns(canned_run, capsys):
    canned_run["rows"] = [_row("flashseq:cpu", "fwd", 1.0, 1.3, 0.8),
                          _row("torch.nn.LSTM", "fwd", 1.25, 0.1, 1.0)]
    assert main(["quick", "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1
    assert "flashseq:cpu (fwd) varied by 130% of its median" in warnings[0]


def test_old_quick_flag_says_its_new_name(capsys):
    assert main(["quick", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "--tiny" in err and "python -m bench quick" in err
