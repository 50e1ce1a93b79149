"""The hierarchical (log-depth) merges of the pLSTM parallel forms equal the sequential walks, in
float64: 1D, the scan over chunk summaries (zero and negative decays included) and plstm_1d's
chunked form; 2D, the scan along a tile row's chain of d states ([BX, BX] matrix links) and
plstm_2d's tiled form; forward and every gradient, odd lengths and grids."""
import pytest
import torch

from flashseq.kernels.plstm import parallel, plstm_1d, plstm_2d
from flashseq.kernels.plstm.parallel import (chunk_states_sequential, chunk_states_tree,
                                             plstm_1d_chunked, plstm_2d_tiled,
                                             tile_chain_sequential, tile_chain_tree)
from tests.helpers import assert_close
from tests.kernels.plstm_cases import grid_problem, line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")


def _check_merges_agree(form, p, seed, **kw):
    """``form`` (plstm_1d_chunked or plstm_2d_tiled) on problem ``p`` gives the same output and
    gradients (output gradient drawn from ``seed``) with merge="tree" as with "sequential"."""
    args = [p[n] for n in NAMES]
    tree = form(*args, scale=0.4, merge="tree", **kw)
    seq = form(*args, scale=0.4, merge="sequential", **kw)
    assert_close("o", tree, seq, 1e-10)
    do = torch.randn(seq.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for name, a, b in zip(NAMES, torch.autograd.grad(tree, args, do),
                          torch.autograd.grad(seq, args, do)):
        assert_close(f"d{name}", a, b, 1e-10)


@pytest.mark.parametrize("NC", [1, 2, 3, 5, 13, 16], ids=lambda n: f"NC{n}")
def test_tree_scan_equals_sequential(NC):
    g = torch.Generator().manual_seed(NC)
    decay = torch.randn(2, 3, NC, generator=g, dtype=torch.float64)
    decay[0, 1, NC // 2] = 0.0                       # a zero decay cuts the history exactly
    update = torch.randn(2, 3, NC, 4, 5, generator=g, dtype=torch.float64)
    tree, seq = chunk_states_tree(decay, update), chunk_states_sequential(decay, update)
    assert tree.shape == seq.shape == update.shape
    assert torch.equal(tree[..., 0, :, :], torch.zeros_like(tree[..., 0, :, :]))
    assert_close("entering", tree, seq, 1e-10)
    if NC > 2:
        # after the zero decay, chunk NC//2 + 1 enters with exactly the update of chunk NC//2
        assert torch.equal(tree[0, 1, NC // 2 + 1], update[0, 1, NC // 2])


@pytest.mark.parametrize("T,chunk", [(1, 4), (37, 4), (77, 16), (63, 8)], ids=str)
def test_chunked_tree_merge_equals_sequential_merge(T, chunk):
    p = line_problem(2, T, 2, 5, 3, seed=T)
    _check_merges_agree(plstm_1d_chunked, p, seed=1, chunk=chunk)


def test_plstm_1d_torch_form_merges_with_the_tree(monkeypatch):
    calls = []

    def spy(decay, update):
        calls.append(update.shape[-3])
        return chunk_states_tree(decay, update)

    monkeypatch.setitem(parallel.CHUNK_MERGES, "tree", spy)
    p = line_problem(1, 21, 1, 3, 3)
    plstm_1d(*(p[n] for n in NAMES), chunk=4, backend="torch")
    assert calls == [6]


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8], ids=lambda n: f"n{n}")
def test_tile_chain_tree_equals_sequential(n):
    g = torch.Generator().manual_seed(n)
    M = 0.7 * torch.randn(2, n, 3, 3, generator=g, dtype=torch.float64)
    M[1, n // 2] = 0.0                               # a zero link cuts the chain exactly
    U = torch.randn(2, n, 3, 4, 2, generator=g, dtype=torch.float64)
    tree, seq = tile_chain_tree(M, U), tile_chain_sequential(M, U)
    assert tree.shape == U.shape
    assert_close("entering", tree, seq, 1e-10)
    if n > 2:
        assert torch.equal(tree[1, n // 2 + 1], U[1, n // 2])


@pytest.mark.parametrize("X,Y,tile", [(5, 7, (2, 2)), (3, 11, (2, 2)), (6, 9, (4, 2))], ids=str)
def test_tiled_tree_merge_equals_sequential_merge(X, Y, tile):
    p = grid_problem(1, X, Y, 2, 3, 4, seed=X * Y)
    _check_merges_agree(plstm_2d_tiled, p, seed=2, tile=tile)


def test_plstm_2d_torch_form_merges_tile_rows_with_the_tree(monkeypatch):
    calls = []

    def spy(M, U):
        calls.append(U.shape[-4])
        return tile_chain_tree(M, U)

    monkeypatch.setitem(parallel.TILE_CHAINS, "tree", spy)
    p = grid_problem(1, 5, 7, 1, 2, 2)
    plstm_2d(*(p[n] for n in NAMES), tile=(2, 2), backend="torch")
    assert calls == [4, 4, 4]            # one scan over the 4 tiles of each of the 3 tile rows
