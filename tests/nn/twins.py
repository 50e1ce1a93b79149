"""Shared by the module tests: build a torch module and its flashseq twin, run both, compare."""
from __future__ import annotations

import torch

import flashseq
from tests.helpers import assert_close

# fused_rnn's "auto" falls back to "reference" until the compiled CPU loop lands; that warning is
# expected here, every other warning is not hidden.
FALLBACK_WARNING = "ignore:flashseq.ops.fused_rnn. falling back:RuntimeWarning"
NOT_FUSED_WARNING = "ignore:.*has no fused kernel:RuntimeWarning"

KINDS = {
    "lstm": (torch.nn.LSTM, flashseq.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, flashseq.LSTM, {"proj_size": 3}),
    "gru": (torch.nn.GRU, flashseq.GRU, {}),
    "rnn_tanh": (torch.nn.RNN, flashseq.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, flashseq.RNN, {"nonlinearity": "relu"}),
}


def make_pair(kind, input_size, hidden_size, dtype, seed, **kwargs):
    """(torch module in float64, flashseq twin in ``dtype`` with the same weights)."""
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    ref = torch_cls(input_size, hidden_size, dtype=torch.float64, **extra, **kwargs)
    ours = ours_cls(input_size, hidden_size, dtype=dtype, **extra, **kwargs)
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()}, strict=True)
    return ref, ours


def random_hx(ref, batch, seed, unbatched=False):
    """Random initial states for ``ref``'s configuration (tuple for LSTM), float64."""
    g = torch.Generator().manual_seed(seed)
    LD = ref.num_layers * (2 if ref.bidirectional else 1)
    lead = (LD,) if unbatched else (LD, batch)
    h = torch.randn(*lead, ref.proj_size or ref.hidden_size, generator=g, dtype=torch.float64) * 0.5
    if isinstance(ref, torch.nn.LSTM):
        return (h, torch.randn(*lead, ref.hidden_size, generator=g, dtype=torch.float64) * 0.5)
    return h


def as_list(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


def leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_(True)


def run_and_backward(module, x, hx, upstream):
    """Forward, then backward of sum(out * d_out) + sum(h_n * d_h_n) over every returned tensor.
    Returns (output tensors, final-state tensors)."""
    out, h_n = module(x) if hx is None else module(x, hx)
    out_t = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    finals = as_list(h_n)
    loss = (out_t * upstream[0].to(out_t.dtype)).sum()
    for f, g in zip(finals, upstream[1:]):
        loss = loss + (f * g.to(f.dtype)).sum()
    loss.backward()
    return out_t, finals


def compare(ref, ours, x, hx, tol, seed, pack=None):
    """Run ref (float64) and ours on the same input/hx and compare outputs, final states and
    the gradients of the input, every hx tensor and every parameter (by name).

    ``pack``: None, or a callable turning the padded input into a PackedSequence."""
    dtype = ours.weight_ih_l0.dtype
    x_ref, x_ours = leaf(x, torch.float64), leaf(x, dtype)
    hx_ref = None if hx is None else [leaf(h, torch.float64) for h in as_list(hx)]
    hx_ours = None if hx is None else [leaf(h, dtype) for h in as_list(hx)]
    wrap = (lambda hs: tuple(hs) if isinstance(ref, torch.nn.LSTM) else hs[0])
    in_ref = pack(x_ref) if pack else x_ref
    in_ours = pack(x_ours) if pack else x_ours

    out_ref, fin_ref = ref(in_ref) if hx is None else ref(in_ref, wrap(hx_ref))
    out_ref_t = out_ref.data if pack else out_ref
    g = torch.Generator().manual_seed(seed + 1)
    upstream = [torch.randn(out_ref_t.shape, generator=g, dtype=torch.float64)]
    upstream += [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in as_list(fin_ref)]
    ref.zero_grad()
    out_r, fin_r = run_and_backward(ref, in_ref, None if hx is None else wrap(hx_ref), upstream)
    ours.zero_grad()
    out_o, fin_o = run_and_backward(ours, in_ours, None if hx is None else wrap(hx_ours), upstream)

    assert out_o.dtype == dtype and all(f.dtype == dtype for f in fin_o)
    assert_close("output", out_o, out_r, tol)
    for i, (fo, fr) in enumerate(zip(fin_o, fin_r)):
        assert_close(f"final state {i}", fo, fr, tol)
    assert_close("grad input", x_ours.grad, x_ref.grad, tol)
    if hx is not None:
        for i, (ho, hr) in enumerate(zip(hx_ours, hx_ref)):
            assert_close(f"grad hx[{i}]", ho.grad, hr.grad, tol)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"parameter {name} got no gradient"
        assert_close(f"grad {name}", p.grad, ref_params[name].grad, tol)
    return out_o, fin_o
