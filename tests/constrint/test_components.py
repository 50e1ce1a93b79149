"""solve() searches the independent parts of a model one after the other (constrint.components):
same answers as brute force, the parts found where the model falls apart, and time-limit
statuses that still hold when the limit strikes between or inside the parts."""
import random

import pytest

import constrint as ci
import constrint.model as model_module
import constrint.search as search_module
from constrint.components import split
from constrint.flatten import Flat
from constrint.search import Search
from tests.constrint.random_models import add_random_part, best_objective, brute_force, is_feasible
from tests.constrint.tiling_models import fused_step_tiling_model

PARTS = 2


def _separable_model(seed):
    """(model, [(standalone part model, its objective sense)]): PARTS random parts over their
    own variables, plus a variable fixed by an equality that every part reads (it must not join
    them); the objective (when any part has one) is the sum of the parts' minimised terms."""
    m = ci.Model()
    n = m.int_var("n", 0, 9)
    m.add(n == 3)
    total, parts = None, []
    for k in range(PARTS):
        rng = random.Random(f"{seed}-{k}")
        objective = add_random_part(rng, m, f"p{k}_")
        m.add(m.variables[-1] * n <= 10 ** 6)  # reads the fixed n: still one part
        alone = ci.Model()
        objective_alone = add_random_part(random.Random(f"{seed}-{k}"), alone, f"p{k}_")
        if objective is not None:
            expr, sense = objective
            term = expr if sense == "min" else -expr
            total = term if total is None else total + term
            (alone.minimize if sense == "min" else alone.maximize)(objective_alone[0])
        parts.append((alone, objective and objective[1]))
    if total is not None:
        m.minimize(total)
    return m, parts


def _split_at_root(model):
    flat = Flat(model)
    search = Search(flat)
    if not search.root():
        return None
    return split(flat, search.st.lo, search.st.hi)


def test_separable_models_match_brute_force_of_their_parts():
    counts = {"split": 0, "infeasible": 0, "optimal": 0}
    for seed in range(150):
        model, parts = _separable_model(seed)
        expected, feasible = 0, True
        for alone, sense in parts:
            points = brute_force(alone)
            feasible &= bool(points)
            if points and sense is not None:
                best = best_objective(alone, points)
                expected += best if sense == "min" else -best
        sol = model.solve()
        if not feasible:
            assert sol.status == "infeasible" and not sol, f"seed {seed}\n{model}"
            counts["infeasible"] += 1
            continue
        assert sol.status == "optimal", f"seed {seed}\n{model}"
        assert is_feasible(model, sol.values), f"seed {seed}\n{model}\n{sol}"
        if model.objective is not None:
            assert sol.objective == expected, f"seed {seed}\n{model}\n{sol}"
            assert sol.objective == model.objective[0].evaluate(sol.values)
            counts["split"] += _split_at_root(model) is not None
        counts["optimal"] += 1
    # the parts must really be searched apart in many of these models, or this proves little
    assert counts["split"] >= 40 and counts["infeasible"] >= 10 and counts["optimal"] >= 60, counts


def test_flashrnn_class_model_splits_into_its_two_passes():
    model, v = fused_step_tiling_model()
    parts, _ = _split_at_root(model)
    with_terms = [part for part in parts if part[2]]
    assert len(with_terms) == 2
    for props, model_vars, terms in with_terms:
        names = {model.variables[i].name for i in model_vars}
        passes = {name.split("_")[0] for name in names}
        assert len(passes) == 1 and passes <= {"fwd", "bwd"}, names


class _LateAfterFirstPoints:
    """perf_counter() reads 0 until the last search created (the last part's) has a cutoff,
    which it gets once every part has a point and its own branch and bound begins."""

    def __init__(self):
        self.search = None

    def perf_counter(self):
        return 1e18 if self.search is not None and self.search.cutoff is not None else 0.0


def test_time_limit_after_every_part_has_a_point_is_feasible(monkeypatch):
    full = fused_step_tiling_model()[0].solve()
    clock = _LateAfterFirstPoints()

    class WatchedSearch(search_module.Search):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clock.search = self

    monkeypatch.setattr(model_module, "Search", WatchedSearch)
    monkeypatch.setattr(search_module, "time", clock)
    model = fused_step_tiling_model()[0]
    sol = model.solve(time_limit=1.0)
    assert sol.status == "feasible" and is_feasible(model, sol.values)
    assert sol.objective == model.objective[0].evaluate(sol.values) <= full.objective


def test_time_limit_before_a_point_is_unknown(monkeypatch):
    class Late:
        @staticmethod
        def perf_counter():
            return 1e18

    monkeypatch.setattr(search_module, "time", Late)
    sol = fused_step_tiling_model()[0].solve(time_limit=1.0)
    assert sol.status == "unknown" and not sol and sol.objective is None


def test_part_without_objective_terms_gets_any_point():
    # x's part reads the objective; y and z are tied by their own constraint only
    m = ci.Model()
    x = m.int_var("x", 0, 50)
    y, z = m.int_var("y", 1, 40), m.int_var("z", values=[3, 5, 7])
    m.add(x * x >= 30)
    m.add(y * z == 35)
    m.minimize(x + 2)
    assert _split_at_root(m) is not None
    sol = m.solve()
    assert sol.status == "optimal" and sol.objective == 8 and sol["y"] * sol["z"] == 35


@pytest.mark.parametrize("sense", ["min", "max"])
def test_objective_term_fixed_at_the_root_counts_once(sense):
    m = ci.Model()
    a, b, c = m.int_var("a", 0, 9), m.int_var("b", 0, 9), m.int_var("c", 2, 2)
    m.add(a * a <= 50)
    m.add(b + c <= 8)
    (m.minimize if sense == "min" else m.maximize)(3 * a - b + 5 * c + 1)
    points = brute_force(m)
    sol = m.solve()
    assert sol.objective == best_objective(m, points) and is_feasible(m, sol.values)
