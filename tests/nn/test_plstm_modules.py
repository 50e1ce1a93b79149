"""pLSTM1d / pLSTM2d: shapes, the four directions against plstm_dag, causality, coverage of all
four quadrants, the paper's initialisation and argument errors."""
import pytest
import torch

import flashseq
from flashseq.kernels.plstm import plstm_dag
from flashseq.nn.plstm import FLIPS
from tests.helpers import assert_close
from tests.kernels.plstm_cases import grid_as_dag


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 8, 8)], ids=str)
def test_2d_shapes_and_backward(mode, shape):
    torch.manual_seed(0)
    layer = flashseq.pLSTM2d(16, num_heads=2, mode=mode)
    x = torch.randn(*shape, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and layer.gate_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode,chirality", [("P", "L"), ("D", "L"), ("D", "R")])
def test_2d_equals_four_directions_of_plstm_dag(mode, chirality):
    torch.manual_seed(1)
    layer = flashseq.pLSTM2d(8, num_heads=2, mode=mode, chirality=chirality, tile=(2, 4)).double()
    with torch.no_grad():   # random gate weights so every gate varies over the image
        layer.gate_proj.weight.normal_(std=0.5)
    x = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    H = layer.num_heads
    q, k, v, g = layer._project(x)
    source, transition, mark, direct = layer._gates(g)
    outs = []
    for i, flips in enumerate(FLIPS):
        def flip(t):
            return t.flip(flips) if flips else t
        heads = slice(i * H, (i + 1) * H)
        p = dict(q=flip(q), k=flip(k), v=flip(v), source=flip(source[:, :, :, heads]),
                 transition=flip(transition[:, :, :, heads]), mark=flip(mark[:, :, :, heads]),
                 direct=flip(direct[:, :, :, heads]))
        args, kw = grid_as_dag(p)
        out = flip(plstm_dag(*args, **kw).reshape(2, 4, 5, H, -1))
        outs.append(out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + layer.norm_eps))
    # every direction is RMS-normalised per head before the four are averaged
    want = layer.o_proj((torch.stack(outs).mean(0) * layer.norm_weight).flatten(-2))
    assert_close("y", layer(x), want, 1e-12)


@pytest.mark.parametrize("mode,chirality", [("P", "L"), ("D", "L"), ("D", "R")])
def test_2d_sees_all_four_quadrants(mode, chirality):
    torch.manual_seed(2)
    layer = flashseq.pLSTM2d(8, num_heads=2, mode=mode, chirality=chirality).double()
    x = torch.randn(1, 7, 7, 8, dtype=torch.float64, requires_grad=True)
    layer(x)[0, 3, 3].sum().backward()
    for corner in ((0, 0), (0, 6), (6, 0), (6, 6)):
        assert x.grad[0, corner[0], corner[1]].abs().sum() > 0, corner


def test_1d_is_causal():
    torch.manual_seed(3)
    layer = flashseq.pLSTM1d(12, num_heads=3, mode="D").double()
    x = torch.randn(2, 11, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y[:, 5].sum().backward()
    assert x.grad[:, 6:].abs().sum() == 0 and x.grad[:, :6].abs().sum() > 0
    assert y.shape == (2, 11, 12)


def test_initialisation():
    layer = flashseq.pLSTM2d(16, num_heads=4)
    assert layer.gate_proj.weight.abs().sum() == 0
    bias = layer.gate_proj.bias.reshape(5, 4, 4)     # (gate, direction, head)
    assert torch.allclose(bias[0, 0], torch.linspace(-2, 2, 4))          # orientation spread
    assert torch.allclose(bias[1, 3], torch.linspace(4, 6, 4))           # decay: long memory
    assert torch.sigmoid(bias[1]).min() ** 16 > 0.7       # reaches across 16 nodes in every head
    x = torch.randn(1, 3, 3, 16)
    _, _, _, g = layer._project(x)
    _, transition, _, _ = layer._gates(g)
    assert bool((transition.abs().sum(-2) <= 1 + 1e-6).all())            # P-mode columns


@pytest.mark.parametrize("kwargs,match", [(dict(mode="Q"), "mode must be 'P' or 'D'"),
                                          (dict(chirality="X", mode="D"), "chirality must be"),
                                          (dict(num_heads=3), "divisible by num_heads")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flashseq.pLSTM2d(16, **kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"x must be \[B, X, Y, 16\]"):
        flashseq.pLSTM2d(16)(torch.randn(2, 5, 16))
