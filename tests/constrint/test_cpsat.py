"""constrint against OR-Tools CP-SAT on random models (same status, same optimum), with every
returned point re-checked by plain evaluation."""
import random

import pytest

import constrint as ci
from tests.constrint.random_models import is_feasible, random_model

pytest.importorskip("ortools")
from constrint import cpsat  # noqa: E402  (needs ortools)

N_MODELS = 240


@pytest.mark.parametrize("chunk", range(4), ids=lambda c: f"models{c * 60}-{c * 60 + 59}")
def test_same_status_and_optimum_as_cpsat(chunk):
    statuses = {"optimal": 0, "infeasible": 0}
    for seed in range(1000 + chunk * 60, 1000 + chunk * 60 + 60):
        model = random_model(random.Random(seed), tiny=False)
        ours = model.solve()
        ref = cpsat.solve(model)
        assert ref.status in ("optimal", "infeasible"), f"seed {seed}: CP-SAT {ref.status}"
        assert ours.status == ref.status, f"seed {seed}\n{model}\nours {ours}\ncp-sat {ref}"
        statuses[ours.status] += 1
        if ours.status == "infeasible":
            continue
        assert is_feasible(model, ours.values), f"seed {seed}\n{model}\n{ours}"
        assert is_feasible(model, ref.values), f"seed {seed}: CP-SAT point infeasible\n{model}\n{ref}"
        assert ours.objective == ref.objective, f"seed {seed}\n{model}\nours {ours}\ncp-sat {ref}"
        if model.objective is not None:
            assert ours.objective == model.objective[0].evaluate(ours.values)
    assert statuses["optimal"] >= 20 and statuses["infeasible"] >= 3, statuses


def test_to_cpsat_returns_model_and_variables():
    m = ci.Model()
    x = m.int_var("x", 1, 8)
    y = m.int_var("y", values=[2, 4, 8])
    m.add(ci.divides(y, x * 3))
    m.maximize(ci.cdiv(x, y))
    cp, variables = cpsat.to_cpsat(m)
    assert set(variables) == {"x", "y"}
    assert cp.validate() == ""
    ref = cpsat.solve(m)
    assert ref.status == "optimal" and ref.objective == m.solve().objective == 4


def test_cpsat_rejects_bad_input():
    with pytest.raises(TypeError, match="constrint.Model"):
        cpsat.to_cpsat("not a model")
    with pytest.raises(ValueError, match="time_limit"):
        cpsat.solve(ci.Model(), time_limit=0)


@pytest.mark.parametrize("config", [dict(), dict(batch=64, hidden=256),
                                    dict(batch=8, hidden=1024, gates=3), dict(hidden=512, heads=4)],
                         ids=["B16-H768", "B64-H256", "B8-H1024-G3", "H512-NH4"])
def test_flashrnn_sized_model_matches_cpsat(config):
    from tests.constrint.tiling_models import flashrnn_like_model
    model, _ = flashrnn_like_model(**config)
    assert len(model.variables) >= 45
    ours = model.solve()
    ref = cpsat.solve(model)
    assert ours.status == ref.status == "optimal"
    assert ours.objective == ref.objective
    assert is_feasible(model, ours.values)
    assert model.objective[0].evaluate(ours.values) == ours.objective


def test_flashrnn_class_model_shape_and_cpsat_agreement():
    # the problem class of tiling_models.fused_step_tiling_model: FlashRNN-sized (~57 variables,
    # ~60 constraints, domains up to 2**30, products and divisibility)
    from constrint.expr import Divides, Product, walk
    from tests.constrint.tiling_models import fused_step_tiling_model
    model, v = fused_step_tiling_model(batch=16, head_dim=256, heads=2)
    assert 50 <= len(model.variables) <= 65 and 50 <= len(model.constraints) <= 70
    assert max(x.hi for x in model.variables) == 2 ** 30
    nodes = [n for c in model.constraints for e in c.expressions() for n in walk(e)]
    assert sum(isinstance(c, Divides) for c in model.constraints) >= 6
    assert sum(isinstance(n, Product) for n in nodes) >= 20
    ours, ref = model.solve(), cpsat.solve(model)
    assert ours.status == ref.status == "optimal" and ours.objective == ref.objective
    assert is_feasible(model, ours.values)
    first, _ = fused_step_tiling_model(batch=16, head_dim=256, heads=2, objective=None)
    point = first.solve()
    assert point.status == "optimal" and point.objective is None and is_feasible(first, point.values)
    assert cpsat.solve(first).status == "optimal"
