"""The GPU half of the tuner, checked on the CPU: the fused_rnn presets equal the benchmark
suite's shapes, the untuned default really ignores the cache, the peer list (cuDNN, FlashRNN
present or absent) reaches the results and the table, and the suite's untuned provider."""
import importlib.machinery
import json
import sys
import types

import pytest
import torch

from autotune import cli, runner, targets, timing
from autotune.workloads import Workload, parse_shapes
from bench.suites import fused_rnn as suite
from flashseq import hardware, tuning
from flashseq.kernels.fused_rnn import triton_tuned

H100 = hardware.GPUSpec.from_name("h100")


def test_gpu_presets_are_the_fused_rnn_suites_shapes():
    full = [(suite.GPU_B, suite.GPU_T, suite.GPU_H // dh, dh) for dh in suite.GPU_HEAD_DIMS]
    tiny = [(suite.GPU_B, suite.GPU_QUICK["T"], suite.GPU_H // dh, dh)
            for dh in suite.GPU_QUICK["head_dims"]]
    assert parse_shapes("fused_rnn", "gpu") == full
    assert parse_shapes("fused_rnn-tiny", "gpu") == tiny


def test_gpu_default_is_timed_with_the_cache_ignored(monkeypatch):
    monkeypatch.delenv(tuning.ENV, raising=False)
    target = targets.GpuTarget(H100, device="cpu")
    with target._override(target.default()):
        # the plan itself: neither the tuner's override nor a cache entry applies
        assert not tuning.enabled() and triton_tuned._override[0] is None
    assert tuning.enabled()
    config = {"path": "fused", "BB": 16}
    with target._override(config):
        assert tuning.enabled() and triton_tuned._override[0] == config
    assert triton_tuned._override[0] is None


def test_gpu_peers_without_flashrnn_say_why(monkeypatch):
    real = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "flashrnn" else real(name, *a))
    found = targets.GpuTarget(H100, device="cpu").peers(Workload("lstm", 2, 3, 2, 8,
                                                                 "float32"), None)
    assert [name for name, _ in found] == ["cuDNN", "FlashRNN"]
    assert found[0][1] == "n/a (torch.nn: several heads)"
    assert found[1][1] == "n/a (flashrnn not installed)"


@pytest.fixture
def fake_flashrnn(monkeypatch):
    """A module named flashrnn with FlashRNN's call signature; records its calls."""
    calls = []

    def flashrnn(wx, r, b, states=None, function="lstm", backend="cuda_fused", dtype="bfloat16"):
        calls.append({"shape": tuple(wx.shape), "function": function, "backend": backend,
                      "dtype": dtype})
        h = torch.tanh(wx.sum(2) + r.sum() * 0 + b.sum() * 0)
        return torch.stack([h, h]), None

    module = types.ModuleType("flashrnn")
    module.flashrnn = flashrnn
    module.__spec__ = importlib.machinery.ModuleSpec("flashrnn", None)
    monkeypatch.setitem(sys.modules, "flashrnn", module)
    return calls


def test_gpu_peers_with_flashrnn_time_both_sides(fake_flashrnn, monkeypatch):
    target = targets.GpuTarget(H100, device="cpu")
    target.backend = "reference"  # ours runs on this CPU; the GPU runs "triton"
    entered = []
    monkeypatch.setattr(target, "_override", lambda c: entered.append(c) or
                        targets.contextlib.nullcontext())
    config = {"path": "fused", "BB": 16}
    w = Workload("lstm", 2, 3, 2, 8, "float32")
    name, calls = target.peers(w, config)[1]
    assert name == "FlashRNN" and callable(calls[0]) and callable(calls[1])
    calls[1]()  # FlashRNN forward + backward on the suite's tensors
    assert fake_flashrnn == [{"shape": (2, 3, 4, 2, 8), "function": "lstm",
                              "backend": "cuda_fused", "dtype": "float32"}]
    calls[0]()  # ours under the tuned configuration
    assert entered == [config]
    gru = target.peers(Workload("gru", 2, 3, 2, 8, "float32"), config)[1][1]
    assert gru == "n/a (the FlashRNN comparison covers lstm, not gru)"


class PeerTarget:
    """A target whose configs are names, with a timed peer and one that cannot run."""

    device = torch.device("cpu")
    kernel = "fake"
    peer_names = ("cuDNN", "FlashRNN")

    def default(self):
        return "default"

    def candidates(self, w, k):
        return []

    def check(self, w, c):
        return None

    def call(self, w, c):
        return lambda: c

    def describe(self, c):
        return c

    def peers(self, w, c):
        return [("cuDNN", (lambda: "ours", lambda: "cudnn")),
                ("FlashRNN", "n/a (flashrnn not installed)")]


def test_results_and_table_carry_every_peer(monkeypatch):
    monkeypatch.setattr(timing, "median_ms", lambda fn, device, **kw: {"median_ms": 2.0})
    monkeypatch.setattr(timing, "paired_ratio", lambda a, b, device, **kw: {"ratio": 0.5})
    res = runner.tune_workload(PeerTarget(), Workload("lstm", 2, 3, 1, 8, "bfloat16"),
                               runner.Settings(k=1))
    assert res.peer_ratios == {"cuDNN": 0.5, "FlashRNN": "n/a (flashrnn not installed)"}
    assert res.ratio_vs_peer == 0.5 and res.to_json()["peers"] == res.peer_ratios
    table = cli.format_table([res], PeerTarget.peer_names)
    head, _, row = table.splitlines()
    assert head.endswith("| speed-up vs cuDNN | speed-up vs FlashRNN |")
    assert row.endswith("| 2.00x | n/a (flashrnn not installed) |")


def test_a_failing_peer_is_its_own_cell_not_a_failed_workload(monkeypatch):
    monkeypatch.setattr(timing, "median_ms", lambda fn, device, **kw: {"median_ms": 2.0})

    def paired_ratio(a, b, device, **kw):
        raise RuntimeError("peer kernel failed")
    monkeypatch.setattr(timing, "paired_ratio", paired_ratio)
    res = runner.tune_workload(PeerTarget(), Workload("lstm", 2, 3, 1, 8, "bfloat16"),
                               runner.Settings(k=1))
    assert res.error is None and res.ratio_vs_peer is None
    assert res.peer_ratios["cuDNN"] == "n/a (RuntimeError: peer kernel failed)"


def test_suite_times_triton_tuned_and_untuned(monkeypatch):
    monkeypatch.delenv(tuning.ENV, raising=False)
    monkeypatch.setattr(suite, "backend_status", lambda *a, **k: None)
    seen = []
    monkeypatch.setattr(suite, "fused_rnn_call",
                        lambda w, t, name: lambda: seen.append((name, tuning.enabled())))
    providers = {p.name: p for p in suite.gpu_providers("cpu", torch.bfloat16)}
    assert {"flashseq:triton", suite.UNTUNED, "flashseq:cuda"} <= set(providers)
    providers["flashseq:triton"].build((None, None))()
    providers[suite.UNTUNED].build((None, None))()
    assert seen == [("triton", True), ("triton", False)]
    assert tuning.enabled()  # restored after the untuned call


def test_gpu_loop_end_to_end_on_the_interpreter(tune_cache, monkeypatch, tmp_path, capsys):
    """run_tuning with the GPU target on this CPU (Triton interpreter; timings programmed, the
    candidates' outputs really checked): table with both peers, JSON, Markdown and a cache
    entry under fused_rnn.triton that dispatch's lookup returns."""
    times = iter([3.0, 2.0, 1.0])  # default, then the two candidates: the second one wins
    monkeypatch.setattr(timing, "median_ms", lambda fn, device, **kw: {"median_ms": next(times)})
    monkeypatch.setattr(timing, "paired_ratio", lambda a, b, device, **kw: {"ratio": 0.5})
    real = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec",
                        lambda name, *a: None if name == "flashrnn" else real(name, *a))
    target = targets.GpuTarget(H100, device="cpu")
    w = Workload("lstm", 2, 3, 2, 16, "float32")
    argv = ["--gpu", "h100", "-k", "2", "--no-progress", "--json", str(tmp_path / "tune.json"),
            "--md", str(tmp_path / "tune.md")]
    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    assert cli.run_tuning(target, [w], args) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "| speed-up vs cuDNN | speed-up vs FlashRNN |" in out
    assert "| 2.00x | n/a (torch.nn: several heads) | n/a (flashrnn not installed) |" in out
    winner = target.candidates(w, 2)[1]
    results = json.loads((tmp_path / "tune.json").read_text())
    assert results["peers"] == ["cuDNN", "FlashRNN"]
    assert results["command"] == "flashseq-tune " + " ".join(argv)
    assert results["results"][0]["config"] == target.describe(winner)
    md = (tmp_path / "tune.md").read_text()
    assert "speed-up vs FlashRNN" in md and "- FlashRNN: the fused_rnn benchmark's calls" in md
    tuning.reload()
    assert tuning.lookup(triton_tuned.KERNEL, "cpu", triton_tuned.bucket_of("lstm", 2, 2, 16),
                         "float32") == winner


def test_suite_pairs_tuned_with_untuned_in_alternation(monkeypatch):
    asked = []
    monkeypatch.setattr(suite.timing, "measure_ratio", lambda fn, base, **kw:
                        asked.append((fn(), base())) or {"ratio": 0.8, "ratio_iqr": 0.01})
    providers = [suite.runner.Provider("flashseq:triton", lambda d: lambda: "tuned"),
                 suite.runner.Provider(suite.UNTUNED, lambda d: lambda: "untuned")]
    rows = [{"case": "c", "provider": "flashseq:triton", "median_ms": 1.0, "status": "ok"},
            {"case": "c", "provider": suite.UNTUNED, "median_ms": 1.2, "status": "ok"}]
    suite.paired_untuned(rows, providers, None, "cpu", 0.01)
    assert asked == [("tuned", "untuned")]
    assert rows[0]["ratio_untuned_paired"] == 0.8 and rows[0]["paired_iqr"] == 0.01
    assert rows[1]["ratio_untuned_paired"] is None
    rows[1]["median_ms"] = None  # the untuned row did not run: nothing to pair
    rows[0]["ratio_untuned_paired"] = None
    suite.paired_untuned(rows, providers, None, "cpu", 0.01)
    assert len(asked) == 1 and rows[0]["ratio_untuned_paired"] is None


def test_peers_are_not_timed_once_the_budget_is_spent(monkeypatch):
    monkeypatch.setattr(timing, "median_ms", lambda fn, device, **kw: {"median_ms": 2.0})
    monkeypatch.setattr(timing, "paired_ratio", lambda a, b, device, **kw: {"ratio": 0.5})
    res = runner.tune_workload(PeerTarget(), Workload("lstm", 2, 3, 1, 8, "bfloat16"),
                               runner.Settings(k=1), deadline=0.0)
    assert res.peer_ratios == {"cuDNN": "n/a (budget reached)",
                               "FlashRNN": "n/a (flashrnn not installed)"}
