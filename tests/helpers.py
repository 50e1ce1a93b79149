"""Comparison helpers and input makers shared by the tests."""
from __future__ import annotations

import torch

# Relative error bounds ||out - ref|| / ||ref|| per dtype (project standard).
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}
TF32_TOLERANCE = 5e-4


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN/inf anywhere in ``out`` gives inf."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    num = (out64 - ref64).norm().item()
    return num / denom if denom > 0 else num


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float):
    """Fail with the tensor's name and its relative error when it exceeds ``tol`` (NaN fails)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def make_rnn_inputs(cell, B, T, NH, DH, dtype=torch.float64, device="cpu", with_states=True,
                    seed=None, scale=1.0):
    """Fresh random (wx, r, b, states) for ``fused_rnn``; r scaled by 1/sqrt(DH) so the
    recurrence neither saturates nor vanishes. sLSTM's stabiliser starts at a random value."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    G, S = cell.num_gates, cell.num_states

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype=dtype, device=device)

    wx = rnd(B, T, G, NH, DH, s=scale)
    r = rnd(G, NH, DH, DH, s=scale / DH ** 0.5)
    b = rnd(G, NH, DH, s=0.1)
    states = None
    if with_states:
        states = rnd(S, B, NH, DH, s=0.5)
        if cell.name == "slstm":  # n > 0 keeps h = c/n meaningful
            states[2] = states[2].abs() + 0.5
    return wx, r, b, states


def random_lengths(B, T, seed=None):
    """[B] int64 lengths covering 0 and T, in no particular order."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 2:
        lengths[1] = 0
    return lengths


def cpu_has_avx512_tile() -> bool:
    """The cpu back end can run its AVX-512 step-GEMM tile here (CPU and build both allow it);
    the switch is turned on to ask and then restored."""
    from flashseq.kernels.fused_rnn import cpu as cpu_backend

    if cpu_backend.unavailable_reason(torch.device("cpu")) is not None:
        return False
    ext = cpu_backend._jit.extension()
    old = ext._set_avx512_tile(True)
    has = bool(ext._uses_avx512_tile())
    ext._set_avx512_tile(old)
    return has


def lstm_module_pair(I: int, H: int, L: int, **kwargs):
    """(torch.nn.LSTM in float64, flashseq.LSTM in float32 with the same weights), seeded: the
    float64 twin is the reference of a float32 module test."""
    import flashseq

    torch.manual_seed(3)
    ref = torch.nn.LSTM(I, H, L, dtype=torch.float64, **kwargs)
    ours = flashseq.LSTM(I, H, L, **kwargs)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return ref, ours
