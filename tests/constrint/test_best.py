"""Model.best(k): the k best feasible points by the objective, checked against brute force."""
import random

import pytest

import constrint as ci
from tests.constrint.random_models import brute_force, is_feasible, random_model
from tests.constrint.test_time_limit import _FakeClock, _hard_model, _watch_search


def _key(point):
    return tuple(sorted(point.items()))


def _ranked_objectives(model, points):
    expr, sense = model.objective
    return sorted((expr.evaluate(p) for p in points), reverse=sense == "max")


def _check_best(model, k, points, where):
    got = model.best(k)
    assert len(got) == min(k, len(points)), where
    assert len({_key(s.values) for s in got}) == len(got), f"{where}: a point returned twice"
    for s in got:
        assert s.status == "optimal", where
        assert is_feasible(model, s.values), where
        if model.objective is not None:
            assert s.objective == model.objective[0].evaluate(s.values), where
    if model.objective is not None:
        # the multiset of objectives is the k best of all points, in order, best first
        assert [s.objective for s in got] == _ranked_objectives(model, points)[:k], where
    return got


@pytest.mark.parametrize("chunk", range(3), ids=lambda c: f"models{c * 60}-{c * 60 + 59}")
def test_best_matches_brute_force(chunk):
    counts = {"with_objective": 0, "infeasible": 0, "ties": 0, "short": 0}
    for seed in range(chunk * 60, chunk * 60 + 60):
        model = random_model(random.Random(1000 + seed), tiny=True)
        points = brute_force(model)
        for k in (1, 2, 5, len(points) + 3):
            _check_best(model, k, points, f"seed {1000 + seed} k {k}\n{model}")
        counts["infeasible"] += not points
        counts["short"] += 0 < len(points) < 5
        if model.objective is not None and points:
            counts["with_objective"] += 1
            ranked = _ranked_objectives(model, points)
            counts["ties"] += len(ranked) >= 2 and ranked[0] == ranked[1]
    # the generator must exercise each case, or this test proves little
    assert min(counts.values()) >= 2, counts


def test_best_with_ties_and_k_past_the_end():
    m = ci.Model()
    x = m.int_var("x", 0, 3)
    y = m.int_var("y", values=[1, 2])
    m.add(x + y <= 4)
    m.minimize(x + y)  # sums 1, 2, 2, 3, 3, 4, 4: ties at every level past the first
    points = brute_force(m)
    assert len(points) == 7
    got = m.best(3)
    assert [s.objective for s in got] == [1, 2, 2]
    assert {(s["x"], s["y"]) for s in got[1:]} == {(1, 1), (0, 2)}
    got = m.best(4)
    assert [s.objective for s in got] == [1, 2, 2, 3]
    assert got[3].values in [{"x": 2, "y": 1}, {"x": 1, "y": 2}]
    everything = m.best(100)
    assert [s.objective for s in everything] == [1, 2, 2, 3, 3, 4, 4]
    assert sorted(map(_key, (s.values for s in everything))) == sorted(map(_key, points))
    m.maximize(x + y)
    assert [s.objective for s in m.best(3)] == [4, 4, 3]


def test_best_of_infeasible_and_objective_free_models():
    m = ci.Model()
    x = m.int_var("x", 0, 10)
    m.add(2 * x == 7)
    m.minimize(x)
    assert m.best(3) == []
    m = ci.Model()
    x = m.int_var("x", 0, 4)
    m.add(x != 2)
    got = m.best(3)
    assert len(got) == 3 and len({s["x"] for s in got}) == 3
    assert all(s.objective is None and s["x"] != 2 for s in got)
    assert len(m.best(10)) == 4
    assert m.best(0) == []


def test_best_first_equals_solve():
    for seed in range(40):
        model = random_model(random.Random(5000 + seed), tiny=True)
        sol = model.solve()
        got = model.best(1)
        if sol.status == "infeasible":
            assert got == []
        else:
            assert got[0].objective == sol.objective


def test_best_rejects_bad_k():
    m = ci.Model()
    m.int_var("x", 0, 3)
    with pytest.raises(TypeError, match="best k"):
        m.best(2.0)
    with pytest.raises(TypeError, match="best k"):
        m.best(True)
    with pytest.raises(ValueError, match="best k must be >= 0"):
        m.best(-1)
    with pytest.raises(ValueError, match="time_limit"):
        m.best(2, time_limit=0)


def test_best_under_a_time_limit_is_feasible(monkeypatch):
    full = _hard_model().best(3)
    assert [s.status for s in full] == ["optimal"] * 3
    m = _hard_model()
    # the fake clock passes the deadline once the search has a cutoff, i.e. after 3 points
    _watch_search(monkeypatch, _FakeClock())
    got = m.best(3, time_limit=1.0)
    assert len(got) == 3 and all(s.status == "feasible" for s in got)
    assert all(is_feasible(m, s.values) for s in got)
    objectives = [s.objective for s in got]
    assert objectives == sorted(objectives, reverse=True)  # maximised: best first
    assert all(a <= b for a, b in zip(objectives, (s.objective for s in full)))


def test_best_on_a_flashrnn_class_model():
    from tests.constrint.tiling_models import fused_step_tiling_model
    model, _ = fused_step_tiling_model(batch=16, head_dim=256, heads=2)
    got = model.best(4)
    assert len(got) == 4
    assert got[0].objective == model.solve().objective
    objectives = [s.objective for s in got]
    assert objectives == sorted(objectives, reverse=True)
    assert all(is_feasible(model, s.values) for s in got)
    assert len({_key(s.values) for s in got}) == 4
