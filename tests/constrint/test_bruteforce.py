"""constrint against brute-force enumeration on tiny random models (no OR-Tools needed)."""
import random

import pytest

import constrint as ci
from tests.constrint.random_models import best_objective, brute_force, is_feasible, random_model

N_MODELS = 300


def _key(point):
    return tuple(sorted(point.items()))


@pytest.mark.parametrize("chunk", range(6), ids=lambda c: f"models{c * 50}-{c * 50 + 49}")
def test_solve_and_solutions_match_brute_force(chunk):
    counts = {"infeasible": 0, "optimal": 0, "with_objective": 0}
    for seed in range(chunk * 50, chunk * 50 + 50):
        model = random_model(random.Random(seed), tiny=True)
        points = brute_force(model)
        found = list(model.solutions())
        assert sorted(map(_key, found)) == sorted(map(_key, points)), f"seed {seed}\n{model}"
        sol = model.solve()
        if not points:
            assert sol.status == "infeasible", f"seed {seed}\n{model}"
            assert sol.objective is None
            with pytest.raises(LookupError):
                sol[model.variables[0]]
            counts["infeasible"] += 1
            continue
        assert sol.status == "optimal", f"seed {seed}\n{model}"
        assert is_feasible(model, sol.values), f"seed {seed}\n{model}"
        assert sol.objective == best_objective(model, points), f"seed {seed}\n{model}"
        if model.objective is not None:
            assert sol.objective == model.objective[0].evaluate(sol.values)
            counts["with_objective"] += 1
        counts["optimal"] += 1
    # the generator must exercise both outcomes, or this test proves little
    assert counts["infeasible"] >= 3 and counts["optimal"] >= 15 and counts["with_objective"] >= 10, counts


def test_solutions_limit_and_distinct():
    m = ci.Model()
    x = m.int_var("x", 0, 9)
    y = m.int_var("y", values=[1, 2, 4, 8])
    m.add(x * y <= 20)
    everything = list(m.solutions())
    assert len({_key(p) for p in everything}) == len(everything) == len(brute_force(m))
    assert len(list(m.solutions(limit=5))) == 5
    assert list(m.solutions(limit=0)) == []
    assert len(list(m.solutions(limit=10 ** 6))) == len(everything)


def test_solutions_ignore_objective():
    m = ci.Model()
    x = m.int_var("x", 0, 5)
    m.add(x != 3)
    m.maximize(x)
    assert sorted(p["x"] for p in m.solutions()) == [0, 1, 2, 4, 5]
    assert m.solve().objective == 5


def test_api_example():
    m = ci.Model()
    x = m.int_var("x", 1, 64)
    t = m.int_var("t", values=[16, 32, 64])
    m.add(x * t <= 4096)
    m.add(ci.divides(t, 768))
    m.add(ci.cdiv(768, t) * x >= 132)
    m.minimize(ci.cdiv(768, t) + 3 * x)
    sol = m.solve(time_limit=None)
    assert sol.status == "optimal"
    assert (sol[x], sol["t"], sol.objective) == (6, 32, 42)
    assert all(isinstance(v, int) for v in sol.values.values())
    assert best_objective(m, brute_force(m)) == 42


def test_no_objective_is_optimal_and_objective_none():
    m = ci.Model()
    x = m.int_var("x", -5, 5)
    m.add(x * x == 9)
    sol = m.solve()
    assert sol.status == "optimal" and sol.objective is None and sol[x] in (-3, 3)


def test_negative_cdiv_and_products():
    m = ci.Model()
    x = m.int_var("x", -20, 20)
    d = m.int_var("d", 1, 7)
    m.add(ci.cdiv(x, d) == -2)
    m.add(x * d * d <= -30)
    m.minimize(x - d)
    points = brute_force(m)
    sol = m.solve()
    assert sol.objective == best_objective(m, points)
    assert sorted(map(_key, m.solutions())) == sorted(map(_key, points))


def test_large_domains_bisect():
    m = ci.Model()
    x = m.int_var("x", 0, 2 ** 30)
    y = m.int_var("y", values=[2 ** k for k in range(31)])
    m.add(x * y <= 3 * 2 ** 20)
    m.add(ci.divides(y, x))
    m.add(x >= 1000)
    m.maximize(x + 5 * y)
    sol = m.solve()
    # y = 1024 allows x up to 3072 (multiple of 1024): 3072 + 5120; y = 2048: x = 1536 -> 1536 + 10240
    best = max(x_max + 5 * y_v for y_v in (2 ** k for k in range(31))
               for x_max in [(3 * 2 ** 20 // y_v) // y_v * y_v] if x_max >= 1000)
    assert sol.status == "optimal" and sol.objective == best
    assert is_feasible(m, sol.values)
