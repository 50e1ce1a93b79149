"""Like-for-like LSTM workloads: every provider gets the same x [B, T, I] and the same weights.

flashseq's time includes the input projection (``x @ W_ih^T + b_ih`` for all steps, one GEMM)
and the view of torch's ``weight_hh_l0`` as ``r``, exactly what a module does per call, so it is
comparable with ``torch.nn.LSTM(x)``. "fwd" runs under ``torch.no_grad()`` (inference);
"fwd+bwd" also returns the gradients of x and every weight for a random upstream gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class LSTMWorkload:
    """One benchmark case: batch B, steps T, input size I, hidden H = NH * DH."""

    B: int
    T: int
    I: int
    H: int
    NH: int
    mode: str
    dtype: torch.dtype
    device: torch.device

    @property
    def DH(self) -> int:
        return self.H // self.NH

    @property
    def case(self) -> str:
        heads = f" NH={self.NH} DH={self.DH}" if self.NH > 1 or self.DH != self.H else ""
        dtype = str(self.dtype).replace("torch.", "")
        return f"lstm B={self.B} T={self.T} H={self.H}{heads} {dtype} {self.mode}"


@dataclass
class LSTMTensors:
    """The shared inputs and weights of one workload.

    x [B, T, I] and dy [B, T, H]; ``weights()`` returns (W_ih [4H, I], b_ih [4H],
    r [4, NH, DH, DH], b [4, NH, DH]) built from ``leaves``, the tensors gradients are taken of.
    ``module`` is the torch.nn.LSTM holding the same weights when NH = 1, else None.
    """

    x: torch.Tensor
    dy: torch.Tensor
    leaves: list
    weights: Callable[[], tuple]
    module: torch.nn.LSTM | None


def make_tensors(w: LSTMWorkload, seed: int = 0) -> LSTMTensors:
    """Fresh random inputs and weights for ``w`` (torch.nn.LSTM's initialisation when NH = 1)."""
    torch.manual_seed(seed)
    x = torch.randn(w.B, w.T, w.I, device=w.device, dtype=w.dtype)
    dy = torch.randn(w.B, w.T, w.H, device=w.device, dtype=w.dtype)
    if w.mode == "fwd+bwd":
        x.requires_grad_(True)
    if w.NH == 1:
        module = torch.nn.LSTM(w.I, w.H, batch_first=True, device=w.device, dtype=w.dtype)
        H = w.H

        def weights():
            # torch's weight_hh_l0 [4H, H] holds gate g in rows g*H..(g+1)*H and computes
            # h_prev @ W_g^T, so r[g, 0] = W_g^T.
            r = module.weight_hh_l0.view(4, H, H).transpose(1, 2).unsqueeze(1)
            return module.weight_ih_l0, module.bias_ih_l0, r, module.bias_hh_l0.view(4, 1, H)

        return LSTMTensors(x, dy, [x, *module.parameters()], weights, module)
    scale = w.H ** -0.5
    W_ih = (torch.rand(4 * w.H, w.I, device=w.device, dtype=w.dtype) * 2 - 1) * scale
    b_ih = (torch.rand(4 * w.H, device=w.device, dtype=w.dtype) * 2 - 1) * scale
    r = torch.randn(4, w.NH, w.DH, w.DH, device=w.device, dtype=w.dtype) * w.DH ** -0.5
    b = (torch.rand(4, w.NH, w.DH, device=w.device, dtype=w.dtype) * 2 - 1) * scale
    params = [t.requires_grad_(True) for t in (W_ih, b_ih, r, b)]
    return LSTMTensors(x, dy, [x, *params], lambda: tuple(params), None)


def _timed(forward: Callable[[], torch.Tensor], t: LSTMTensors, mode: str) -> Callable[[], object]:
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return forward()
        return fn

    def fn():
        return torch.autograd.grad(forward(), t.leaves, t.dy)
    return fn


def torch_lstm_call(w: LSTMWorkload, t: LSTMTensors) -> Callable[[], object]:
    """torch.nn.LSTM(x) (cuDNN on a GPU, torch's CPU kernel otherwise); needs NH = 1."""
    if t.module is None:
        raise NotImplementedError("torch.nn.LSTM has no head-wise (block-diagonal) recurrence")
    module = t.module
    return _timed(lambda: module(t.x)[0], t, w.mode)


def recurrence_call(w: LSTMWorkload, t: LSTMTensors,
                    recur: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Callable[[], object]:
    """The projection GEMM followed by ``recur(wx [B, T, 4, NH, DH], r, b) -> [B, T, NH, DH]``."""
    B, T, NH, DH = w.B, w.T, w.NH, w.DH

    def forward():
        W_ih, b_ih, r, b = t.weights()
        wx = torch.nn.functional.linear(t.x, W_ih, b_ih).view(B, T, 4, NH, DH)
        return recur(wx, r, b).reshape(B, T, NH * DH)

    return _timed(forward, t, w.mode)


def fused_rnn_call(w: LSTMWorkload, t: LSTMTensors, backend: str) -> Callable[[], object]:
    """flashseq.ops.fused_rnn with ``backend`` after the projection GEMM."""
    from flashseq.ops import fused_rnn

    return recurrence_call(w, t, lambda wx, r, b: fused_rnn(wx, r, b, None, cell="lstm",
                                                             backend=backend)[0])


def flashseq_module_call(w: LSTMWorkload, t: LSTMTensors, backend: str) -> Callable[[], object]:
    """flashseq.LSTM loaded with the torch.nn.LSTM's state_dict (NH = 1)."""
    import flashseq

    if not hasattr(flashseq, "LSTM"):
        raise NotImplementedError("flashseq.LSTM is not part of this build yet")
    if t.module is None:
        raise NotImplementedError("only the one-head flashseq.LSTM is compared here")
    module = flashseq.LSTM(w.I, w.H, batch_first=True, backend=backend, device=w.device,
                           dtype=w.dtype)
    module.load_state_dict(t.module.state_dict())
    leaves = [t.x, *module.parameters()]
    grad_t = LSTMTensors(t.x, t.dy, leaves, t.weights, None)
    return _timed(lambda: module(t.x)[0], grad_t, w.mode)
