"""Suite "fused_rnn": flashseq.ops.fused_rnn back ends against torch.nn.LSTM and FlashRNN.

CPU (issue 3): B in {1, 16}, T in {64, 512}, H in {128, 512} (input size I = H), float32,
forward and forward+backward; flashseq "cpu" (and flashseq.LSTM when it exists) against
torch.nn.LSTM, ratio = time / torch.nn.LSTM's time (target <= 1.05).
CUDA (Triton issue): B=16, T=1024, H=768 as NH x DH for DH in {16, ..., 768}, bfloat16;
flashseq "triton"/"cuda", torch.nn.LSTM (cuDNN, NH=1 only), FlashRNN cuda_fused/triton_fused.
"flashseq:triton" runs what dispatch chooses, with the tuning cache of ``$FLASHSEQ_CACHE_DIR``
(``flashseq-tune --gpu auto --shapes fused_rnn`` writes it; bench/gpu_session.sh tunes first);
"flashseq:triton-untuned" is the same call with ``FLASHSEQ_TUNING=off`` (the plan's tiles); the
column ``ratio_untuned`` is each row's median over the untuned row's, and on the tuned row
``ratio_untuned_paired`` (with ``paired_iqr``) times the two in alternation
(``bench.timing.measure_ratio``, the median of per-pair ratios): the number to quote.
Every provider gets the same x and weights and includes the input projection GEMM.
"flashseq:cuda-barrier-floor" (CUDA, forward rows only) runs the cuda provider's persistent
step loop with its barriers and no work (csrc/fused/barrier_floor.cu, same plan and launch
shape, no projection GEMM): ``ratio_floor`` is each row's median over it, and ``step_us`` every
timed row's median per step (median / T), so the cuda forward's step stands beside its floor.
It is skipped wherever the cuda provider is (not opted in, no GPU).
``--headline`` (``python -m bench fused_rnn --headline``, run early by bench/gpu_session.sh)
keeps only the workloads the README quotes: on CUDA the LSTM at NH=1 (vs cuDNN) and NH=12 x
DH=64 (head-wise, vs FlashRNN), and a GRU at NH=1 vs torch.nn.GRU (cuDNN; its weights are the
GRU module's, the recurrence flashseq's "gru" cell, so the two do the same work, not the same
arithmetic), forward and forward+backward, without the untuned twin; on a CPU the largest grid
point (B=16, T=512, H=512).
The full CPU run is estimated at 3-5 minutes on a quiet 2-core machine (48 measurements, each
>= 1 s and >= 5 runs, capped near 30 s by bench.timing); not yet timed on a quiet machine.
"""
from __future__ import annotations

import itertools

import torch

from bench import peers, runner, smoke, timing
from bench.rnn_workloads import (MODES, LSTMTensors, LSTMWorkload, _timed, flashseq_module_call,
                                 fused_rnn_call, make_tensors, torch_lstm_call)
from bench.suites import CorrectnessError
from flashseq.kernels.fused_rnn import backends

DESCRIPTION = ("LSTM over a whole sequence: flashseq.ops.fused_rnn back ends (projection GEMM "
               "included) vs torch.nn.LSTM on the same x and weights (CPU target: ratio <= 1.05); "
               "on CUDA also head-wise H=768 as NH x DH vs FlashRNN.")

CPU_GRID = {"B": (1, 16), "T": (64, 512), "H": (128, 512)}
CPU_QUICK_GRID = {"B": (2,), "T": (8,), "H": (16,)}
GPU_B, GPU_T, GPU_H = 16, 1024, 768
GPU_HEAD_DIMS = (16, 32, 64, 128, 256, 384, 768)
GPU_QUICK = {"T": 64, "head_dims": (64, 768)}
HEADLINE_HEAD_DIMS = (768, 64)  # NH=1 against cuDNN, NH=12 head-wise against FlashRNN
CPU_HEADLINE_GRID = {"B": (16,), "T": (512,), "H": (512,)}
BASELINE = "torch.nn.LSTM"
GRU_BASELINE = "torch.nn.GRU"
HEADLINE = True  # python -m bench accepts --headline for this suite
HEADLINE_CHECK = {"B": GPU_B, "T": 3, "NH": 1, "DH": GPU_H}  # the smoke check's shape there


def backend_status(name: str, device, dtype, **shape) -> str | None:
    """None if backend ``name`` runs on ``device`` and passes the smoke check, else the row
    status ("skipped: ..." when it cannot run, "failed: ..." when it is wrong)."""
    reason = backends.unavailable_reason(name, torch.device(device))
    if reason:
        return f"skipped: {reason}"
    if name == "triton" and torch.device(device).type == "cpu":
        # only possible under TRITON_INTERPRET=1: the kernels' tests cover it, a time would not
        return "skipped: Triton on CPU runs in the interpreter (TRITON_INTERPRET=1); not timed"
    try:
        wrong = smoke.check_fused_rnn(name, device, dtype, **shape)
    except NotImplementedError as err:
        return f"skipped: {err}"
    except Exception as err:  # a crash in our kernel is a failure, reported in the table
        return f"failed: smoke check raised {type(err).__name__}: {str(err)[:200]}"
    return f"failed: smoke check: {wrong}" if wrong else None


def module_status(backend: str, device, dtype) -> str | None:
    import flashseq

    if not hasattr(flashseq, "LSTM"):
        return "skipped: flashseq.LSTM is not part of this build yet"
    reason = backends.unavailable_reason(backend, torch.device(device))
    if reason:
        return f"skipped: {reason}"
    try:
        wrong = smoke.check_lstm_module(backend, device, dtype)
    except NotImplementedError as err:
        return f"skipped: {err}"
    except Exception as err:
        return f"failed: smoke check raised {type(err).__name__}: {str(err)[:200]}"
    return f"failed: smoke check: {wrong}" if wrong else None


def _fused(name):
    return lambda data: fused_rnn_call(*data, name)


def cpu_providers(device, dtype, quick: bool) -> list[runner.Provider]:
    names = ["cpu", "reference"] if quick else ["cpu"]
    out = [runner.Provider(f"flashseq:{n}", _fused(n), status=backend_status(n, device, dtype, NH=1))
           for n in names]
    out.append(runner.Provider("flashseq.LSTM:cpu", lambda data: flashseq_module_call(*data, "cpu"),
                               status=module_status("cpu", device, dtype)))
    out.append(runner.Provider(BASELINE, lambda data: torch_lstm_call(*data), peer=True))
    return out


def _run_cpu(device, quick, progress, headline: bool = False) -> list[dict]:
    dtype = torch.float32
    grid = CPU_QUICK_GRID if quick else CPU_HEADLINE_GRID if headline else CPU_GRID
    providers = cpu_providers(device, dtype, quick)
    cases = [LSTMWorkload(B=B, T=T, I=H, H=H, NH=1, mode=mode, dtype=dtype, device=device)
             for B, T, H, mode in itertools.product(grid["B"], grid["T"], grid["H"], MODES)]
    rows = []
    for w in progress(cases):
        rows += runner.time_case(w.case, (w, make_tensors(w)), providers, device=device,
                                 min_run_time=0.05 if quick else 1.0, extra={"mode": w.mode})
    return runner.add_ratios(rows, BASELINE)


def _untuned(name):
    """The fused_rnn call of back end ``name`` with the tuning cache ignored on every call."""
    from autotune.targets import tuning_off

    def build(data):
        fn = fused_rnn_call(*data, name)

        def run():
            with tuning_off():
                return fn()
        return run
    return build


UNTUNED = "flashseq:triton-untuned"


FLOOR = "flashseq:cuda-barrier-floor"


def _barrier_floor(data):
    """The cuda forward's empty step loop (flashseq/kernels/fused_rnn/cuda_floor.py) for the
    workload; NotImplementedError (row skipped) where the CUDA back end cannot run."""
    from flashseq.kernels.fused_rnn.cuda_floor import barrier_floor_call

    w = data[0]
    return barrier_floor_call("lstm", w.B, w.T, w.NH, w.DH, w.dtype, w.device)


def add_step_times(rows: list[dict], steps: int) -> list[dict]:
    """Set ``step_us`` = median per step in microseconds (None if untimed); status stays last."""
    for r in rows:
        status = r.pop("status", None)
        r["step_us"] = r["median_ms"] * 1e3 / steps if r.get("median_ms") else None
        if status is not None:
            r["status"] = status
    return rows


def gpu_providers(device, dtype, untuned: bool = True, check: dict | None = None
                  ) -> list[runner.Provider]:
    """The CUDA run's providers; ``check``: the shape of the smoke check (B, T, NH, DH; default
    bench.smoke's small one)."""
    triton_status = backend_status("triton", device, dtype, **(check or {}))
    cuda_status = backend_status("cuda", device, dtype, **(check or {}))
    out = [runner.Provider("flashseq:triton", _fused("triton"), status=triton_status),
           runner.Provider(UNTUNED, _untuned("triton"), status=triton_status),
           runner.Provider("flashseq:cuda", _fused("cuda"), status=cuda_status),
           runner.Provider(FLOOR, _barrier_floor, status=cuda_status)]
    if not untuned:
        out = [p for p in out if p.name != UNTUNED]
    flashrnn_reason = peers.flashrnn_reason(device)
    for fb in peers.FLASHRNN_BACKENDS:
        out.append(runner.Provider(f"flashrnn:{fb}",
                                   lambda data, fb=fb: peers.flashrnn_call(*data, fb), peer=True,
                                   status=f"skipped: {flashrnn_reason}" if flashrnn_reason else None))
    return out


def paired_untuned(rows: list[dict], providers, data, device, min_run_time: float) -> None:
    """Time flashseq:triton against its untuned twin in alternation for one case's ``rows``
    (when both ran) and put the ratio on the tuned row; every row gets the two columns."""
    by = {r["provider"]: r for r in rows}
    for r in rows:
        r.setdefault("ratio_untuned_paired", None)
        r.setdefault("paired_iqr", None)
    tuned, untuned = by.get("flashseq:triton"), by.get(UNTUNED)
    if not (tuned and untuned and tuned.get("median_ms") and untuned.get("median_ms")):
        return
    build = {p.name: p.build for p in providers}
    try:
        pair = timing.measure_ratio(build["flashseq:triton"](data), build[UNTUNED](data),
                                    device=device, min_run_time=min_run_time)
    except (RuntimeError, ValueError) as err:  # timed once already: say so, keep the rows
        tuned["status"] = f"{tuned.get('status') or 'ok'}; paired timing failed: {err}"[:300]
        return
    tuned["ratio_untuned_paired"], tuned["paired_iqr"] = pair["ratio"], pair["ratio_iqr"]


def gpu_head_dims(quick: bool, headline: bool) -> tuple[int, ...]:
    """The LSTM head dims the CUDA run times (NH = 768 / DH)."""
    if headline:
        return HEADLINE_HEAD_DIMS
    return GPU_QUICK["head_dims"] if quick else GPU_HEAD_DIMS


def _run_gpu(device, quick, progress, headline: bool = False) -> list[dict]:
    dtype = torch.bfloat16
    T = GPU_QUICK["T"] if quick else GPU_T
    head_dims = gpu_head_dims(quick, headline)
    # --headline checks at the timed plan (T does not change a plan), which bench.gpu_smoke
    # has built already in a GPU session, instead of building one more small plan
    providers = gpu_providers(device, dtype, untuned=not headline,
                              check=HEADLINE_CHECK if headline else None)
    cudnn = runner.Provider(BASELINE, lambda data: torch_lstm_call(*data), peer=True)
    cases = [LSTMWorkload(B=GPU_B, T=T, I=GPU_H, H=GPU_H, NH=GPU_H // DH, mode=mode, dtype=dtype,
                          device=device)
             for DH, mode in itertools.product(head_dims, MODES)]
    rows = []
    for w in progress(cases):
        # cuDNN has no head-wise recurrence: it is only a peer at NH = 1
        case_providers = providers + [cudnn] if w.NH == 1 else providers
        # the floor is the forward's loop: forward rows only
        case_providers = [p for p in case_providers if p.name != FLOOR or w.mode == "fwd"]
        data = (w, make_tensors(w))
        case_rows = runner.time_case(w.case, data, case_providers, device=device,
                                     min_run_time=0.05 if quick else 0.5,
                                     extra={"mode": w.mode, "NH": w.NH, "DH": w.DH})
        paired_untuned(case_rows, case_providers, data, device, 0.05 if quick else 0.5)
        rows += case_rows
    rows = _ratio_columns(rows, BASELINE, T)
    if headline:
        rows += _run_gru(device, dtype, T, progress, 0.05 if quick else 0.5)
    return rows


def _ratio_columns(rows: list[dict], baseline: str, steps: int) -> list[dict]:
    runner.add_ratios(rows, baseline)
    runner.add_ratios(rows, UNTUNED, column="ratio_untuned")
    runner.add_ratios(rows, FLOOR, column="ratio_floor")
    add_step_times(rows, steps)
    return runner.add_ratios(rows, "flashrnn:cuda_fused", column="ratio_flashrnn")


def _gru_tensors(B: int, T: int, H: int, mode: str, device, dtype) -> LSTMTensors:
    """x [B, T, H], dy and a torch.nn.GRU(H, H) (cuDNN's weights for both sides)."""
    torch.manual_seed(0)
    module = torch.nn.GRU(H, H, batch_first=True, device=device, dtype=dtype)
    x = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=mode == "fwd+bwd")
    dy = torch.randn(B, T, H, device=device, dtype=dtype)
    return LSTMTensors(x, dy, [x, *module.parameters()], lambda: (), module)


def _fused_gru(backend: str):
    """The projection GEMM, then fused_rnn's "gru" cell on the module's recurrent weights
    (W_hh [3H, H] viewed as r [3, 1, H, H]) with backend ``backend``."""
    from flashseq.ops import fused_rnn

    def build(data):
        B, T, H, mode, t = data
        m = t.module

        def forward():
            wx = torch.nn.functional.linear(t.x, m.weight_ih_l0, m.bias_ih_l0).view(B, T, 3, 1, H)
            r = m.weight_hh_l0.view(3, H, H).transpose(1, 2).unsqueeze(1)
            h = fused_rnn(wx, r, m.bias_hh_l0.view(3, 1, H), None, cell="gru", backend=backend)[0]
            return h.reshape(B, T, H)
        return _timed(forward, t, mode)
    return build


def _run_gru(device, dtype, T: int, progress, min_run_time: float) -> list[dict]:
    """The headline GRU rows: flashseq cuda/triton against torch.nn.GRU at B=16, H=768, NH=1."""
    providers = [runner.Provider(f"flashseq:{n}", _fused_gru(n),
                                 status=backend_status(n, device, dtype, cell="gru",
                                                       **HEADLINE_CHECK))
                 for n in ("triton", "cuda")]
    providers.append(runner.Provider(GRU_BASELINE, lambda data: _timed(
        lambda: data[4].module(data[4].x)[0], data[4], data[3]), peer=True))
    rows = []
    for mode in progress(MODES):
        data = (GPU_B, T, GPU_H, mode, _gru_tensors(GPU_B, T, GPU_H, mode, device, dtype))
        rows += runner.time_case(f"gru B={GPU_B} T={T} H={GPU_H} bfloat16 {mode}", data,
                                 providers, device=device, min_run_time=min_run_time,
                                 extra={"mode": mode, "NH": 1, "DH": GPU_H})
    return _ratio_columns(rows, GRU_BASELINE, T)


def run(device, quick: bool, progress, headline: bool = False) -> list[dict]:
    """Rows for every (case, provider); see the module docstring for the workloads
    (``headline``: only the README's headline workloads)."""
    wrong = smoke.check_lstm_mapping()
    if wrong:
        raise CorrectnessError(f"the benchmark's LSTM set-up is not torch.nn.LSTM: {wrong}")
    device = torch.device(device)
    if device.type == "cuda":
        return _run_gpu(device, quick, progress, headline)
    return _run_cpu(device, quick, progress, headline)
