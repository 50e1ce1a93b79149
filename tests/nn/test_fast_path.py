"""The plain eager CPU call of the modules (flashseq/nn/fast_path.py): which calls take it, that
it computes what the general path computes (outputs and every gradient), and that it always reads
the parameters as they are now (in-place updates, load_state_dict, dtype changes,
functional_call, requires_grad toggled)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import flashseq
from flashseq import _jit
from flashseq.nn import fast_path
from tests.helpers import rel_err

pytestmark = pytest.mark.skipif(_jit.extension_error() is not None,
                                reason="the compiled CPU extension is not available")

MODULES = {"lstm": (torch.nn.LSTM, flashseq.LSTM, {}), "gru": (torch.nn.GRU, flashseq.GRU, {}),
           "rnn": (torch.nn.RNN, flashseq.RNN, {"nonlinearity": "tanh"})}


def pair(kind, dtype=torch.float32, **kwargs):
    """(torch.nn module in float64, flashseq twin in dtype), same weights."""
    torch_cls, ours_cls, extra = MODULES[kind]
    torch.manual_seed(0)
    ref = torch_cls(5, 6, dtype=torch.float64, **extra, **kwargs)
    ours = ours_cls(5, 6, dtype=dtype, **extra, **kwargs)
    ours.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    return ref, ours


def outputs(module, x, hx=None):
    """Output and final states of one call, as a flat list of tensors."""
    out, h_n = module(x) if hx is None else module(x, hx)
    return [out, *(h_n if isinstance(h_n, tuple) else (h_n,))]


def spy_on_fast_path(monkeypatch):
    """A list that gets True for each call the fast path computed, False for each it declined."""
    taken = []

    def run(*args, **kwargs):
        result = original(*args, **kwargs)
        taken.append(result is not None)
        return result

    original = fast_path.run
    monkeypatch.setattr(fast_path, "run", run)
    return taken


def general_path(monkeypatch):
    monkeypatch.setattr(fast_path, "_plain_cpu_call", lambda *args: False)


@pytest.mark.parametrize("kind", MODULES)
def test_plain_calls_take_it_and_others_do_not(kind, monkeypatch):
    taken = spy_on_fast_path(monkeypatch)
    _, m = pair(kind)
    x = torch.randn(7, 3, 5)
    m(x)
    with torch.no_grad():
        m(x[:, 0])  # unbatched
    assert taken == [True, True]
    m(pack_padded_sequence(x, torch.tensor([7, 4, 2])))
    m(x, reset=torch.zeros(3, 7, dtype=torch.bool))
    m.double()(x.double(), return_all_states=True)
    assert taken == [True, True, False, False, False]


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("options", [dict(num_layers=2, bidirectional=True),
                                     dict(num_layers=2, batch_first=True)],
                         ids=["2layers-bidirectional", "2layers-batch_first"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_same_results_and_gradients_as_the_general_path(kind, options, dtype, monkeypatch):
    ref, m = pair(kind, dtype, **options)
    g = torch.Generator().manual_seed(1)
    B, T = 3, 7
    shape = (B, T, 5) if options.get("batch_first") else (T, B, 5)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64)
    LD = 2 * 2 if options.get("bidirectional") else 2
    hx64 = [torch.randn(LD, B, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    hx64 = tuple(hx64) if kind == "lstm" else hx64[0]
    results = []
    taken = spy_on_fast_path(monkeypatch)
    for general in (False, True):
        if general:
            assert taken and all(taken)  # the first round ran the fast path, every call of it
            general_path(monkeypatch)
        x = x64.to(dtype).requires_grad_(True)
        hx = (tuple(h.to(dtype).requires_grad_(True) for h in hx64) if kind == "lstm"
              else hx64.to(dtype).requires_grad_(True))
        outs = outputs(m, x, hx)
        upstream = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=dtype)
                    for i, o in enumerate(outs)]
        leaves = [x, *(hx if kind == "lstm" else (hx,)), *m.parameters()]
        grads = torch.autograd.grad(outs, leaves, upstream)
        with torch.no_grad():
            no_grad_outs = outputs(m, x, hx)
        results.append((outs, grads, no_grad_outs))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    (fast_outs, fast_grads, fast_ng), (gen_outs, gen_grads, gen_ng) = results
    for name, got, want in ([("out", a, b) for a, b in zip(fast_outs, gen_outs)]
                            + [("grad", a, b) for a, b in zip(fast_grads, gen_grads)]
                            + [("no_grad out", a, b) for a, b in zip(fast_ng, gen_ng)]):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert rel_err(got, want) <= tol, (name, rel_err(got, want))
    # and both are torch.nn's results
    want = outputs(ref, x64, hx64)
    for got, w in zip(fast_outs, want):
        assert rel_err(got.double(), w) <= tol


def matches_torch(ours, ref, x):
    with torch.no_grad():
        got, want = outputs(ours, x), outputs(ref, x.double())
    return all(rel_err(a.double(), b) < 1e-5 for a, b in zip(got, want))


@pytest.mark.parametrize("kind", MODULES)
def test_reads_the_parameters_as_they_are_now(kind):
    ref, m = pair(kind)
    x = torch.randn(6, 2, 5)
    assert matches_torch(m, ref, x)
    # an optimizer's in-place update
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    outputs(m, x)[0].square().sum().backward()
    opt.step()
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    assert matches_torch(m, ref, x)
    # in-place edits under no_grad, then load_state_dict
    with torch.no_grad():
        m.weight_hh_l0.mul_(-1)
        m.bias_ih_l0.add_(0.3)
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    assert matches_torch(m, ref, x)
    fresh = {k: torch.randn_like(v) * 0.3 for k, v in m.state_dict().items()}
    m.load_state_dict(fresh)
    ref.load_state_dict({k: v.double() for k, v in fresh.items()})
    assert matches_torch(m, ref, x)
    # requires_grad toggled off and on: the same numbers, and gradients again once on
    m.requires_grad_(False)
    assert matches_torch(m, ref, x)
    m.requires_grad_(True)
    outputs(m, x)[0].sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    # a dtype change: float64 module, float64 input
    m.double()
    with torch.no_grad():
        got, want = outputs(m, x.double()), outputs(ref, x.double())
    assert all(a.dtype == torch.float64 and rel_err(a, b) < 1e-12 for a, b in zip(got, want))


@pytest.mark.parametrize("kind", MODULES)
def test_functional_call_uses_the_substituted_parameters(kind):
    ref, m = pair(kind)
    x = torch.randn(6, 2, 5)
    other = {k: torch.randn_like(v) * 0.3 for k, v in m.named_parameters()}
    got = torch.func.functional_call(m, other, (x,))
    ref.load_state_dict({k: v.double() for k, v in other.items()})
    want = ref(x.double())
    assert rel_err(got[0].double(), want[0]) < 1e-5
    # the module's own parameters are untouched and used again afterwards
    assert not matches_torch(m, ref, x)
    # gradients with respect to the substituted tensors
    leaves = {k: v.requires_grad_(True) for k, v in other.items()}
    out = torch.func.functional_call(m, leaves, (x,))[0]
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
