"""pLSTM argument checks and tile plans: bad input raises naming the argument."""
import pytest
import torch

from flashseq.kernels.plstm import (grid_dag, line_dag, plan_plstm_1d, plan_plstm_2d, plstm_1d,
                                    plstm_2d, plstm_dag)
from tests.kernels.plstm_cases import grid_problem, line_problem

NAMES = ("q", "k", "v", "source", "transition", "mark", "direct")


def _line(**change):
    p = {n: t.detach() for n, t in line_problem(1, 6, 2, 3, 4).items()}
    p.update(change)
    return [p[n] for n in NAMES]


def test_1d_wrong_gate_shape_names_it():
    with pytest.raises(ValueError, match=r"mark must have shape \[B, T, H\]"):
        plstm_1d(*_line(mark=torch.zeros(1, 6, 3, dtype=torch.float64)))


def test_1d_integer_q_is_type_error():
    with pytest.raises(TypeError, match="q must be float16"):
        plstm_1d(*_line(q=torch.zeros(1, 6, 2, 3, dtype=torch.int64)))


def test_1d_bad_chunk():
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        plstm_1d(*_line(), chunk=0)


def test_2d_wrong_transition_and_tile():
    p = {n: t.detach() for n, t in grid_problem(1, 3, 4, 1, 2, 2).items()}
    bad = dict(p, transition=torch.zeros(1, 3, 4, 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"transition must be 6-D \[B, X, Y, H, 2, 2\]"):
        plstm_2d(*(bad[n] for n in NAMES))
    with pytest.raises(ValueError, match="tile must be a pair"):
        plstm_2d(*(p[n] for n in NAMES), tile=(4,))


def test_dag_graph_checks():
    p = {n: t.detach() for n, t in line_problem(1, 4, 1, 2, 2).items()}
    q, k, v, d = p["q"], p["k"], p["v"], p["direct"]
    g3, g2 = torch.ones(1, 3, 1, dtype=torch.float64), torch.ones(1, 2, 1, dtype=torch.float64)
    edges, pairs = line_dag(4)
    with pytest.raises(ValueError, match="edges must go forward in node order"):
        plstm_dag(q, k, v, g3, g2, g3, d, edges=edges.flip(1), transition_edges=pairs)
    with pytest.raises(ValueError, match="do not meet at a node"):
        plstm_dag(q, k, v, g3, g2, g3, d, edges=edges, transition_edges=pairs.flip(1))
    with pytest.raises(TypeError, match="edges must be an int32/int64 tensor"):
        plstm_dag(q, k, v, g3, g2, g3, d, edges=edges.double(), transition_edges=pairs)
    with pytest.raises(ValueError, match=r"transition must have shape \[B, P, H\]"):
        plstm_dag(q, k, v, g3, g3, g3, d, edges=edges, transition_edges=pairs)


def test_grid_dag_sizes():
    edges, pairs, kind = grid_dag(3, 4)
    assert edges.shape == (2 * 4 + 3 * 3, 2) and int(kind.sum()) == 9
    # every node but the first row/column joins 2 incoming to <= 2 outgoing edges
    assert pairs.shape[1] == 2 and bool((edges[pairs[:, 0], 1] == edges[pairs[:, 1], 0]).all())


def test_plans_fit_the_problem():
    small = plan_plstm_2d(5, 7, 4, 4)
    assert small.BX <= 8 and small.BY <= 8 and small.BX * small.BY <= 256
    big = plan_plstm_2d(128, 128, 64, 64, 64, "cuda")
    assert big.BX * big.BY <= 256 and big.cost > 0
    assert plan_plstm_1d(10, 4, 4).chunk == 16
