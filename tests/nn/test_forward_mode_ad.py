"""Forward-mode AD (``torch.autograd.forward_ad`` dual tensors, ``torch.func.jvp``) on CPU: the
oneDNN input projection (cpu_linear.py) and the modules' eager fast path (fast_path.py) call ops
with no forward derivative, which would return the primal with its tangent silently dropped.
Either the tangent is right (the projection then takes F.linear, which has one; a module whose
recurrence is a PyTorch loop) or the call raises (the fused recurrence has no jvp), never a
missing or zero tangent."""
from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import flashseq
from flashseq.kernels.fused_rnn import cpu_linear
from tests.helpers import rel_err


def _dual_tangent(fn, x, t):
    """fn's output tangent for x with tangent t, through forward_ad dual tensors."""
    with fwAD.dual_level():
        return fwAD.unpack_dual(fn(fwAD.make_dual(x, t))).tangent


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("how", ["dual", "func.jvp"])
def test_projection_carries_the_tangent(how, grad_enabled):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    weight, bias = torch.randn(8, 5, generator=g), torch.randn(8, generator=g)
    want = F.linear(t, weight)  # the projection is linear in x

    def project(x_):
        return cpu_linear.linear(x_, weight, bias)

    with torch.set_grad_enabled(grad_enabled):
        if how == "dual":
            got = _dual_tangent(project, x, t)
        else:
            got = torch.func.jvp(project, (x,), (t,))[1]
    assert got is not None, "the tangent was dropped"
    assert rel_err(got, want) <= 1e-6, rel_err(got, want)


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
def test_relu_rnn_module_tangent_equals_torch(grad_enabled):
    # nonlinearity="relu" runs a per-step PyTorch loop after the oneDNN projection: its tangent
    # is exact only if the projection's is
    torch.manual_seed(0)
    ref = torch.nn.RNN(5, 6, 2, nonlinearity="relu", dtype=torch.float32)
    ours = flashseq.RNN(5, 6, 2, nonlinearity="relu")
    ours.load_state_dict(ref.state_dict())
    x, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    with torch.set_grad_enabled(grad_enabled):
        want = _dual_tangent(lambda x_: ref(x_)[0], x, t)
        with pytest.warns(RuntimeWarning, match="no fused kernel"):
            got = _dual_tangent(lambda x_: ours(x_)[0], x, t)
    assert got is not None and rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_fused_module_raises_instead_of_dropping_the_tangent(kind, grad_enabled):
    # the compiled recurrence has no jvp: a clear error, as torch.nn.LSTM's on CPU
    m = getattr(flashseq, kind)(5, 6)
    x, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    with torch.set_grad_enabled(grad_enabled), pytest.raises((NotImplementedError, RuntimeError),
                                                             match="jvp|forward"):
        _dual_tangent(lambda x_: m(x_)[0], x, t)
