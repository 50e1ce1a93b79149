"""Second derivatives (``create_graph=True``) through the modules and the fused back ends:
gradgradcheck in float64 for every module kind and for ``fused_rnn(backend="cpu")`` per cell,
and the Triton Function's create_graph backward against the reference loop's."""
import os

import pytest
import torch
from torch.func import functional_call

from flashseq.cells import CELLS, get_cell
from flashseq.kernels.fused_rnn import fused_rnn
from tests.conftest import HAS_CUDA
from tests.helpers import TOLERANCE, assert_close, make_rnn_inputs
from tests.nn.twins import FALLBACK_WARNING, KINDS, NOT_FUSED_WARNING, as_list, random_hx

pytestmark = [pytest.mark.filterwarnings(FALLBACK_WARNING), pytest.mark.filterwarnings(NOT_FUSED_WARNING)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradgradcheck_of_each_module_kind(kind):
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    hidden = 3 if kind == "lstm_proj" else 2  # proj_size=... must stay below hidden_size
    extra = dict(extra, proj_size=2) if kind == "lstm_proj" else extra
    module = ours_cls(2, hidden, bidirectional=True, dtype=torch.float64, **extra)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = [h.requires_grad_() for h in as_list(random_hx(module, 2, seed=1))]

    def run(x, *tensors):
        states = tensors[:len(hx)]
        weights = dict(zip(names, tensors[len(hx):]))
        states = tuple(states) if isinstance(module, torch.nn.LSTM) else states[0]
        out, h_n = functional_call(module, weights, (x, states))
        return (out, *as_list(h_n))

    assert torch.autograd.gradgradcheck(run, (x, *hx, *params))


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_gradgradcheck_of_the_cpu_backend(cell_name):
    cell = get_cell(cell_name)
    inputs = [t.requires_grad_() for t in make_rnn_inputs(cell, 2, 3, 2, 2, seed=0)]
    lengths = torch.tensor([3, 2])

    def run(wx, r, b, states):
        return fused_rnn(wx, r, b, states, cell=cell_name, lengths=lengths, backend="cpu")

    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.skipif(not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_triton_backend_second_derivatives_match_the_reference(cell_name):
    cell = get_cell(cell_name)
    device = "cuda" if HAS_CUDA else "cpu"
    base = make_rnn_inputs(cell, 2, 3, 1, 4, dtype=torch.float32, device=device, seed=2)
    g = torch.Generator().manual_seed(3)
    dh = torch.randn(2, 3, 1, 4, generator=g).to(device)
    directions = [torch.randn(t.shape, generator=g).to(device) for t in base]
    results = {}
    for backend in ("triton", "reference"):
        inputs = [t.detach().clone().requires_grad_() for t in base]
        h, _ = fused_rnn(*inputs, cell=cell_name, backend=backend)
        first = torch.autograd.grad((h * dh).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((f * v).sum() for f, v in zip(first, directions)), inputs)
        results[backend] = first + second
    names = [f"d{n}" for n in ("wx", "r", "b", "states")] + [f"d2 {n}" for n in ("wx", "r", "b", "states")]
    for name, ours, ref in zip(names, results["triton"], results["reference"]):
        assert_close(name, ours, ref, TOLERANCE[torch.float32])
