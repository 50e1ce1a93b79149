"""The hierarchical (log-depth) merge of pLSTM chunk summaries equals the sequential walk over
the chunks: the scan itself (zero and negative decays included) and plstm_1d's chunked form
(forward and every gradient) on odd lengths, in float64."""
import pytest
import torch

from flashseq.kernels.plstm import parallel, plstm_1d
from flashseq.kernels.plstm.parallel import (chunk_states_sequential, chunk_states_tree,
                                             plstm_1d_chunked)
from tests.helpers import assert_close
from tests.kernels.plstm_cases import line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")


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
    args = [p[n] for n in NAMES]
    tree = plstm_1d_chunked(*args, scale=0.4, chunk=chunk, merge="tree")
    seq = plstm_1d_chunked(*args, scale=0.4, chunk=chunk, merge="sequential")
    assert_close("o", tree, seq, 1e-10)
    do = torch.randn(seq.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_tree = torch.autograd.grad(tree, args, do)
    g_seq = torch.autograd.grad(seq, args, do)
    for name, a, b in zip(NAMES, g_tree, g_seq):
        assert_close(f"d{name}", a, b, 1e-10)


def test_plstm_1d_torch_form_merges_with_the_tree(monkeypatch):
    calls = []

    def spy(decay, update):
        calls.append(update.shape[-3])
        return chunk_states_tree(decay, update)

    monkeypatch.setitem(parallel.CHUNK_MERGES, "tree", spy)
    p = line_problem(1, 21, 1, 3, 3)
    plstm_1d(*(p[n] for n in NAMES), chunk=4, backend="torch")
    assert calls == [6]
