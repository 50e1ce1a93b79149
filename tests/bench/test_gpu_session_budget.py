"""bench/gpu_session.sh --budget: the ordered plan, per-step limits, a step cut by its limit, and
the CPU runs of its first entry points (bench.gpu_smoke, bench.gpu_sanitize, fused_rnn --headline)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.suites import fused_rnn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")
# the value order the session promises: correctness, sanitizer, headline numbers, tests, the rest
ORDER = ["environment", "smoke", "sanitizer", "headline-fused_rnn", "pytest-gpu-quick",
         "sanitizer-racecheck", "sanitizer-tests", "pytest-gpu", "tune", "bench-fused_rnn",
         "readme-table"]


def _dry_run(tmp_path, *args):
    env = {**os.environ, "FLASHSEQ_PEER_WHEELS": str(tmp_path), "FLASHSEQ_GPU_SLUG": "x"}
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_bash
def test_dry_run_budget_540_orders_steps_and_limits_fit(tmp_path):
    out = _dry_run(tmp_path, "--budget", "540", "--suites", "fused_rnn")
    planned = re.findall(r"^\[dry-run\] ([\w-]+): .*\[limit (\d+) s, ends by (\d+) s\]$", out, re.M)
    names = [n for n, _, _ in planned]
    assert names[:5] == ORDER[:5], out
    limits = [int(lim) for _, lim, _ in planned]
    assert all(lim > 0 for lim in limits)
    assert sum(limits) <= 540 - 15 and int(planned[-1][2]) == sum(limits)
    assert f"limits sum to {sum(limits)} s of 540 s" in out
    # what does not fit is listed as skipped, in the same order, never silently dropped
    mentioned = [n for n in ORDER if re.search(rf"^(\[dry-run\]|===) {n}: ", out, re.M)]
    assert mentioned == ORDER
    assert re.search(r"^=== pytest-gpu: skipped: budget: \d+ s left < 90 s", out, re.M)
    assert "CUDA_KERNELS=1" in next(line for line in out.splitlines() if "] smoke:" in line)
    assert "fused_rnn --headline" in out and "bench.gpu_sanitize" in out


@needs_bash
def test_dry_run_without_budget_keeps_every_step_unlimited(tmp_path):
    out = _dry_run(tmp_path, "--suites", "fused_rnn")
    steps = re.findall(r"^\[dry-run\] ([\w-]+): .*\[no limit\]$", out, re.M)
    assert steps == ORDER


@pytest.mark.parametrize("args, message", [(["--budget", "ten"], "--budget needs"),
                                           (["--budget", "30"], "--budget needs"),
                                           (["--limit", "smoke"], "--limit needs STEP=SECONDS")])
def test_bad_budget_arguments_exit_2(args, message):
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


@needs_bash
def test_slow_step_is_cut_by_its_limit_and_later_steps_still_run(tmp_path):
    """Stand-ins for nvidia-smi, compute-sanitizer and python; the smoke step sleeps 60 s, is
    capped at 3 s (--limit), is recorded as timed out, and every later step still runs; the
    summary and the pack are written. The sanitizer answers as on a sandbox without support
    ('Device not supported'): recorded as such, and the other sanitizer steps are skipped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA Fake GPU'\n")
    (bin_dir / "compute-sanitizer").write_text(
        "#!/usr/bin/env bash\necho '========= Error: Device not supported'\nexit 1\n")
    (bin_dir / "fake-python").write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
if [ "$2" = bench.gpu_smoke ]; then sleep 60; fi
# what a kill at this moment would leave: the summary as written after the steps before
if [ "$2" = pytest ] && [ ! -e {tmp_path}/mid.md ]; then cp {tmp_path}/pack/SUMMARY.md {tmp_path}/mid.md; fi
exit 0
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out, pack = tmp_path / "results", tmp_path / "pack"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHON": str(bin_dir / "fake-python"), "FLASHSEQ_PEER_WHEELS": str(tmp_path),
           "FLASHSEQ_SESSION_CACHE": str(tmp_path / "session")}
    done = subprocess.run(["bash", str(SCRIPT), "--budget", "120", "--limit", "smoke=3",
                           "--no-tune", "--suites", "quick", "--out", str(out), "--pack", str(pack)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 1, done.stdout + done.stderr  # a timed-out step fails the session
    summary = (out / "SUMMARY.md").read_text()
    assert re.search(r"\| smoke \| .* \| 124 \| TIMED OUT at its 3 s limit \| [3-9] \| 3 \|", summary)
    for later in ("headline-fused_rnn", "pytest-gpu-quick", "pytest-gpu", "bench-quick"):
        assert re.search(rf"\| {later} \| `.*` \| 0 \| ok \|", summary), later
    # no fused_rnn.json (the suite did not run): nothing for the README table
    assert "| readme-table | - | - | skipped: neither fused_rnn.json nor tune.json" in summary
    assert "1 step(s) failed, 1 timed out" in summary
    # written after every step, not only at the end
    mid = (tmp_path / "mid.md").read_text()
    assert "TIMED OUT at its 3 s limit" in mid and "| headline-fused_rnn | `" in mid
    assert "pytest-gpu" not in mid and "Finished in" not in mid and "Finished in" in summary
    assert re.search(r"\| sanitizer \| .* \| 1 \| FAILED \|", summary)
    assert "| sanitizer-note | - | - | compute-sanitizer refused this device" in summary
    assert "sanitizer-racecheck" not in summary and "sanitizer-tests" not in summary
    lines = calls.read_text().splitlines()
    assert [i for i, line in enumerate(lines) if line.startswith("-m bench fused_rnn --headline")]
    assert (pack / "SUMMARY.md").read_text() == summary
    with tarfile.open(pack / "gpu_results.tgz") as tar:
        assert "results/SUMMARY.md" in tar.getnames() and "results/logs/smoke.log" in tar.getnames()


def test_gpu_smoke_runs_on_cpu_under_the_interpreter(tmp_path):
    """The smoke entry point on CPU: Triton (interpreter) passes on tiny shapes, CUDA is a
    skipped row, the JSON holds every case; --strict turns an unavailable back end into exit 1."""
    from bench import gpu_smoke

    js = tmp_path / "smoke.json"
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--device", "cpu", "--cells", "lstm", "gru",
           "--json", str(js), "--md", str(tmp_path / "smoke.md")]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(js.read_text())["rows"]
    assert [(r["backend"], r["cell"]) for r in rows] == [
        ("cuda", "lstm"), ("triton", "lstm"), ("cuda", "gru"), ("triton", "gru")]
    assert all(r["status"] == "ok" for r in rows if r["backend"] == "triton")
    assert all(r["status"].startswith("skipped") for r in rows if r["backend"] == "cuda")
    # each case in its own process (--jobs 2), as on a GPU; a skipped back end fails --strict
    strict = subprocess.run(cmd[:5] + ["--cells", "elman", "--jobs", "2", "--strict", "--json",
                                       str(js)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert strict.returncode == 1 and "1 ok, 0 failed, 1 skipped of 2" in strict.stdout, strict
    rows = json.loads(js.read_text())["rows"]
    assert {(r["backend"], r["status"].split(":")[0]) for r in rows} == {
        ("triton", "ok"), ("cuda", gpu_smoke.UNAVAILABLE)}


def test_gpu_smoke_case_past_its_timeout_is_a_failed_row():
    from bench import gpu_smoke

    case = {"backend": "triton", "cell": "lstm", "dtype": "float32", "shape": gpu_smoke.CPU_SHAPE}
    row = gpu_smoke._case_in_child(case, "cpu", timeout=0.01)
    assert row["status"].startswith("failed: no result within the case timeout")
    assert row["cell"] == "lstm" and row["DH"] == gpu_smoke.CPU_SHAPE["DH"]


def test_gpu_smoke_plan_puts_bf16_first_then_the_later_steps_shapes():
    from bench import gpu_sanitize, gpu_smoke

    cases = gpu_smoke.plan_cases(["cuda", "triton"], list(gpu_smoke.CELLS),
                                 list(gpu_smoke.GPU_DTYPES), gpu_smoke.GPU_SHAPE, extra=True)
    assert len(cases) == 2 * 4 * 3 + 1 + 2 * 4
    first = [(c["backend"], c["cell"], c["dtype"]) for c in cases[:2]]
    assert first == [("cuda", "lstm", "bfloat16"), ("triton", "lstm", "bfloat16")]
    assert {c["dtype"] for c in cases[:17]} == {"bfloat16"}
    assert cases[8]["backend"] == gpu_smoke.FLOOR
    extra = [(c["cell"], c["shape"]["B"], c["shape"]["NH"], c["shape"]["DH"]) for c in cases[9:17]]
    # the headline benchmark's plans (B=16, H=768), its smoke checks' shape among them ...
    for NH, DH in zip((1, 768 // 64), (768, 64)):
        assert ("lstm", fused_rnn.GPU_B, NH, DH) in extra and fused_rnn.GPU_H == NH * DH
    hc = fused_rnn.HEADLINE_CHECK
    assert {("lstm", hc["B"], hc["NH"], hc["DH"]), ("gru", hc["B"], hc["NH"], hc["DH"])} <= set(extra)
    # on a CPU (no extra cases) nothing but the cells asked for
    plain = gpu_smoke.plan_cases(["cuda"], ["lstm"], ["float32"], gpu_smoke.CPU_SHAPE)
    assert [c["backend"] for c in plain] == ["cuda"]
    # ... and every CUDA plan the sanitizer runs are built by the smoke first
    for _, backend, _, B, _, NH, DH in gpu_sanitize.CASES:
        assert any(c["backend"] == backend and c["cell"] == "lstm" and c["dtype"] == "bfloat16"
                   and (c["shape"]["B"], c["shape"]["NH"], c["shape"]["DH"]) == (B, NH, DH)
                   for c in cases)


def test_gpu_smoke_reports_a_wrong_kernel_as_failed(monkeypatch):
    from bench import gpu_smoke, smoke

    monkeypatch.setattr(smoke, "check_fused_rnn", lambda *a, **k: "h rel err 1e+00 > 1e-05")
    row = gpu_smoke.run_case("reference", "lstm", "float32", "cpu", gpu_smoke.CPU_SHAPE)
    assert row["status"] == "failed: h rel err 1e+00 > 1e-05"


def test_gpu_sanitize_dry_run_lists_one_case_per_kernel():
    done = subprocess.run([sys.executable, "-m", "bench.gpu_sanitize", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("cuda-forward-fused", "cuda-backward-split", "cuda-barrier-floor", "triton-fused"):
        assert f"gpu_sanitize: {name}:" in done.stdout


def test_fused_rnn_headline_selection():
    assert fused_rnn.gpu_head_dims(quick=False, headline=True) == (768, 64)
    assert fused_rnn.gpu_head_dims(quick=False, headline=False) == fused_rnn.GPU_HEAD_DIMS
    names = [p.name for p in fused_rnn.gpu_providers("cpu", None, untuned=False)]
    assert fused_rnn.UNTUNED not in names and "flashseq:cuda" in names


def test_fused_rnn_headline_gru_call_computes_the_gru_cell():
    """The headline GRU provider (projection GEMM + fused_rnn "gru") on the reference back end
    on CPU gives the reference recurrence's output for the module's weights, and gradients."""
    import torch

    from flashseq.cells import get_cell
    from flashseq.kernels.fused_rnn.reference import fused_rnn_reference

    B, T, H = 2, 4, 8
    t = fused_rnn._gru_tensors(B, T, H, "fwd", torch.device("cpu"), torch.float64)
    y = fused_rnn._fused_gru("reference")((B, T, H, "fwd", t))()
    m = t.module
    wx = torch.nn.functional.linear(t.x, m.weight_ih_l0, m.bias_ih_l0).view(B, T, 3, 1, H)
    r = m.weight_hh_l0.view(3, H, H).transpose(1, 2).unsqueeze(1)
    zeros = torch.zeros(1, B, 1, H, dtype=torch.float64)
    ref = fused_rnn_reference(wx, r, m.bias_hh_l0.view(3, 1, H), zeros, cell=get_cell("gru"))[0]
    assert torch.allclose(y, ref.reshape(B, T, H))
    tg = fused_rnn._gru_tensors(B, T, H, "fwd+bwd", torch.device("cpu"), torch.float64)
    grads = fused_rnn._fused_gru("reference")((B, T, H, "fwd+bwd", tg))()
    assert len(grads) == 5 and all(torch.isfinite(g).all() for g in grads)


def test_headline_flag_reaches_fused_rnn_and_is_refused_elsewhere(tmp_path, capsys, monkeypatch):
    from bench.__main__ import main

    assert main(["quick", "--headline", "--tiny", "--no-progress"]) == 2
    assert "--headline needs a suite with headline workloads" in capsys.readouterr().err
    seen = []

    def fake_run(device, quick, progress, headline=False):
        seen.append(headline)
        return [{"case": "c", "provider": "p", "median_ms": 1.0, "min_ms": 1.0, "iqr_ms": 0.0}]

    monkeypatch.setattr(fused_rnn, "run", fake_run)
    js = tmp_path / "h.json"
    for args in (["--headline"], []):
        assert main(["fused_rnn", *args, "--no-progress", "--device", "cpu", "--json", str(js)]) == 0
    assert seen == [True, False]
    assert json.loads(js.read_text())["rows"][0]["provider"] == "p"


def test_gpu_smoke_strict_ignores_a_shape_a_back_end_does_not_serve(monkeypatch, tmp_path):
    """--strict fails on a back end that cannot run at all, not on one unsupported shape."""
    from bench import gpu_smoke

    def fake_case(backend, cell, dtype, device, shape):
        status = "skipped: no plan for this shape" if cell == "gru" else "ok"
        return {"backend": backend, "cell": cell, "dtype": dtype, **shape, "seconds": 0.0,
                "status": status}

    monkeypatch.setattr(gpu_smoke, "run_case", fake_case)
    args = ["--device", "cpu", "--backends", "triton", "--cells", "lstm", "gru", "--strict"]
    assert gpu_smoke.main(args) == 0


def test_headline_gpu_path_runs_its_cases_at_tiny_sizes_on_cpu(monkeypatch):
    """The CUDA run's --headline code path, on CPU at tiny sizes: the LSTM at NH=1 (with the
    torch.nn.LSTM row) and head-wise, then the GRU against torch.nn.GRU; no untuned twin. The
    flashseq rows are skipped here (no CUDA), the torch rows are timed."""
    import torch

    monkeypatch.setattr(fused_rnn, "GPU_B", 2)
    monkeypatch.setattr(fused_rnn, "GPU_H", 16)
    monkeypatch.setattr(fused_rnn, "GPU_QUICK", {"T": 4, "head_dims": (16,)})
    monkeypatch.setattr(fused_rnn, "HEADLINE_HEAD_DIMS", (16, 8))
    monkeypatch.setattr(fused_rnn, "HEADLINE_CHECK", {"B": 2, "T": 3, "NH": 1, "DH": 16})
    rows = fused_rnn._run_gpu(torch.device("cpu"), True, lambda xs: xs, headline=True)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    assert cases == ["lstm B=2 T=4 H=16 bfloat16 fwd", "lstm B=2 T=4 H=16 bfloat16 fwd+bwd",
                     "lstm B=2 T=4 H=16 NH=2 DH=8 bfloat16 fwd",
                     "lstm B=2 T=4 H=16 NH=2 DH=8 bfloat16 fwd+bwd",
                     "gru B=2 T=4 H=16 bfloat16 fwd", "gru B=2 T=4 H=16 bfloat16 fwd+bwd"]
    providers = {r["provider"] for r in rows}
    assert fused_rnn.UNTUNED not in providers and "flashseq:cuda" in providers
    gru = [r for r in rows if r["case"].startswith("gru")]
    assert {r["provider"] for r in gru} == {"flashseq:triton", "flashseq:cuda", "torch.nn.GRU"}
    base = [r for r in gru if r["provider"] == "torch.nn.GRU"]
    assert all(r["median_ms"] and r["ratio"] == 1 for r in base)
    assert all(r["status"].startswith("skipped") for r in gru if r["provider"] != "torch.nn.GRU")
    assert all(r["median_ms"] for r in rows if r["provider"] == "torch.nn.LSTM")
