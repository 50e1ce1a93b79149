"""pLSTM: the parallel 1D and 2D forms equal direct DAG propagation (forward and every
gradient, against float64), 1D equals chunk_gla with a scalar decay, P-mode stays bounded on a
64 x 64 grid, D-mode propagates along its multitree's single paths."""
import pytest
import torch
import torch.nn.functional as F

import flashseq
from flashseq.kernels.plstm import d_mode_2d, p_mode_2d, plstm_1d, plstm_2d, plstm_dag
from tests.helpers import assert_close
from tests.kernels.plstm_cases import (check_1d_float32_against_dag, grid_as_dag, grid_problem,
                                      line_as_dag, line_problem)

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")


def _grads(out, inputs, seed=1):
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad(out, inputs, do.to(out.dtype), allow_unused=True,
                               materialize_grads=True)


def _check_against_dag(out, ref, p, tol, reshape=None):
    inputs = [p[n] for n in NAMES]
    out_r = out if reshape is None else out.reshape(ref.shape)
    assert_close("o", out_r, ref, tol)
    for name, g, g_ref in zip(NAMES, _grads(out_r, inputs), _grads(ref, inputs)):
        assert_close(f"d{name}", g, g_ref, tol)


@pytest.mark.parametrize("T,chunk", [(1, None), (13, 4), (16, 16), (37, None)], ids=str)
def test_1d_equals_dag_float64(T, chunk):
    p = line_problem(2, T, 2, 3, 5)
    out = plstm_1d(*(p[n] for n in NAMES), chunk=chunk)
    args, kw = line_as_dag(p)
    _check_against_dag(out, plstm_dag(*args, **kw), p, 1e-12)


def test_1d_float32_vs_float64_dag():
    check_1d_float32_against_dag(line_problem(2, 29, 2, 8, 8), 1, chunk=8)


@pytest.mark.parametrize("X,Y,tile", [(5, 7, (4, 4)), (5, 7, (2, 4)), (6, 4, None), (1, 5, (2, 2)),
                                      (3, 1, (2, 2)), (4, 4, (4, 4))], ids=lambda x: str(x))
def test_2d_equals_dag_float64(X, Y, tile):
    p = grid_problem(2, X, Y, 2, 3, 4)
    out = plstm_2d(*(p[n] for n in NAMES), tile=tile)
    args, kw = grid_as_dag(p)
    ref = plstm_dag(*args, **kw)
    _check_against_dag(out, ref, p, 1e-12, reshape=True)


def test_2d_float32_vs_float64_dag():
    p64 = grid_problem(1, 7, 6, 2, 8, 8, seed=3)
    p32 = {n: t.detach().float().requires_grad_() for n, t in p64.items()}
    out = plstm_2d(*(p32[n] for n in NAMES), tile=(4, 4)).reshape(1, 42, 2, 8)
    args, kw = grid_as_dag(p64)
    ref = plstm_dag(*args, **kw)
    assert_close("o", out, ref, 1e-5)
    grads = _grads(out, [p32[n] for n in NAMES])
    for name, g, g_ref in zip(NAMES, grads, _grads(ref, [p64[n] for n in NAMES])):
        assert_close(f"d{name}", g, g_ref, 1e-5)


def test_exact_zero_transitions_have_finite_gradients():
    p = grid_problem(1, 5, 5, 1, 2, 2, seed=4)
    with torch.no_grad():
        p["transition"][:, 2, :, :, 0, 0] = 0.0
        p["transition"][:, :, 3, :, 1, 1] = 0.0
    out = plstm_2d(*(p[n] for n in NAMES), tile=(2, 2))
    args, kw = grid_as_dag(p)
    _check_against_dag(out, plstm_dag(*args, **kw), p, 1e-12, reshape=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_1d_scalar_gates_equal_chunk_gla(dtype):
    B, T, H, K, V = 2, 45, 3, 16, 8
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(dtype).requires_grad_()
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2).to(dtype).requires_grad_()
    ref = flashseq.ops.chunk_gla(q, k, v, g[..., None].expand(B, T, H, K))[0]
    decay, ones = g.exp(), torch.ones_like(g)
    out = plstm_1d(q, k, v, ones, decay, decay, ones, chunk=16)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert_close("o", out, ref, tol)
    for name, a, b in zip("qkvg", _grads(out, (q, k, v, g)), _grads(ref, (q, k, v, g))):
        assert_close(f"d{name}", a, b, tol)


def _unit_source_grid(X, Y, transition, source):
    """o(x, y) with one unit k v^T written at (0, 0) and marks 1: the state entering each node."""
    q = torch.ones(1, X, Y, 1, 1)
    k = torch.zeros(1, X, Y, 1, 1)
    k[0, 0, 0] = 1.0
    v = torch.ones(1, X, Y, 1, 1)
    mark = torch.ones(1, X, Y, 1, 2)
    direct = torch.zeros(1, X, Y, 1)
    return plstm_2d(q, k, v, source, transition, mark, direct, scale=1.0)[0, :, :, 0, 0]


def _antidiagonal_sums(o):
    X, Y = o.shape
    idx = torch.arange(X)[:, None] + torch.arange(Y)[None, :]
    return torch.zeros(X + Y - 1, dtype=o.dtype).index_add_(0, idx.reshape(-1), o.reshape(-1))


def test_p_mode_64x64_neither_explodes_nor_vanishes():
    X = Y = 64
    orient = torch.rand(1, X, Y, 1, generator=torch.Generator().manual_seed(6))
    transition = p_mode_2d(orient)
    cols = transition.abs().sum(dim=-2)
    assert bool((cols <= 1 + 1e-6).all())
    source = torch.stack([orient, 1 - orient], dim=-1)
    sums = _antidiagonal_sums(_unit_source_grid(X, Y, transition, source))
    # the unit written at (0, 0) reaches every anti-diagonal whole until it starts leaving the grid
    assert torch.allclose(sums[1:64], torch.ones(63), atol=1e-5), sums[1:64]
    assert float(sums.max()) <= 1 + 1e-5
    # the same grid with columns summing to 1.5 explodes: the bound is P-mode's doing
    loose = torch.full_like(transition, 0.75)
    assert float(_antidiagonal_sums(_unit_source_grid(X, Y, loose, source)).max()) > 1e6


def _single_path_L(s_r, s_d, rl, dl, du, m_l, m_u):
    """G[(x1, y1), (x0, y0)] of chirality "L", path by path (r* then one turn down then d*)."""
    X, Y = s_r.shape
    G = torch.zeros(X, Y, X, Y, dtype=torch.float64)
    for x0 in range(X):
        for y0 in range(Y):
            for x1 in range(X):
                for y1 in range(Y):
                    if x1 > x0 and y1 == y0:       # straight right, read through "l"
                        G[x1, y1, x0, y0] = s_r[x0, y0] * rl[x0 + 1:x1, y0].prod() * m_l[x1, y1]
                    elif x1 == x0 and y1 > y0:     # straight down, read through "u"
                        G[x1, y1, x0, y0] = s_d[x0, y0] * du[x0, y0 + 1:y1].prod() * m_u[x1, y1]
                    elif x1 > x0 and y1 > y0:      # right, turn down at (x1, y0), down
                        G[x1, y1, x0, y0] = (s_r[x0, y0] * rl[x0 + 1:x1, y0].prod() * dl[x1, y0]
                                             * du[x1, y0 + 1:y1].prod() * m_u[x1, y1])
    return G


@pytest.mark.parametrize("chirality", ["L", "R"])
def test_d_mode_propagates_along_single_paths(chirality):
    X, Y = 5, 4
    gen = torch.Generator().manual_seed(7)
    pre = torch.randn(3, 1, X, Y, 1, generator=gen, dtype=torch.float64)
    transition = d_mode_2d(pre[0], pre[1], pre[2], chirality)
    turn_zero = transition[..., 0, 1] if chirality == "L" else transition[..., 1, 0]
    assert bool((turn_zero == 0).all())
    source = torch.randn(1, X, Y, 1, 2, generator=gen, dtype=torch.float64)
    mark = torch.randn(1, X, Y, 1, 2, generator=gen, dtype=torch.float64)
    # K = 1, q = k = 1 and v one-hot per node: o[(x1, y1), n] is the propagation coefficient
    q = torch.ones(1, X, Y, 1, 1, dtype=torch.float64)
    v = torch.eye(X * Y, dtype=torch.float64).reshape(1, X, Y, 1, X * Y)
    o = plstm_2d(q, q, v, source, transition, mark, torch.zeros(1, X, Y, 1, dtype=torch.float64),
                 scale=1.0, tile=(2, 2))
    G = o[0, :, :, 0, :].reshape(X, Y, X, Y)
    T, s, m = transition[0, :, :, 0], source[0, :, :, 0], mark[0, :, :, 0]
    if chirality == "L":
        want = _single_path_L(s[..., 0], s[..., 1], T[..., 0, 0], T[..., 1, 0], T[..., 1, 1],
                              m[..., 0], m[..., 1])
    else:  # the transposed grid: r <-> d, l <-> u, and the turn T[r, u] plays T[d, l]
        want = _single_path_L(s[..., 1].T, s[..., 0].T, T[..., 1, 1].T, T[..., 0, 1].T,
                              T[..., 0, 0].T, m[..., 1].T, m[..., 0].T).permute(1, 0, 3, 2)
    assert_close("G", G, want, 1e-12)


def test_public_exports():
    assert flashseq.ops.plstm_1d is plstm_1d and flashseq.ops.plstm_2d is plstm_2d
    assert flashseq.ops.plstm_dag is plstm_dag
