"""Bad input raises ValueError/TypeError with a message naming the problem; expressions print
readably and refuse to be used as Python booleans."""
import pytest

import constrint as ci


def _model():
    m = ci.Model()
    return m, m.int_var("x", 1, 10), m.int_var("y", values=[2, 4, 8])


BAD_INPUT = {
    "empty-range": (lambda m, x, y: m.int_var("z", 5, 4), ValueError, "empty domain"),
    "empty-values": (lambda m, x, y: m.int_var("z", values=[]), ValueError, "empty domain"),
    "float-bound": (lambda m, x, y: m.int_var("z", 0, 2.5), TypeError, "upper bound hi must be an integer"),
    "float-value": (lambda m, x, y: m.int_var("z", values=[1, 2.0]), TypeError, "value must be an integer"),
    "missing-bound": (lambda m, x, y: m.int_var("z", 3), TypeError, "both bounds"),
    "range-and-values": (lambda m, x, y: m.int_var("z", 1, 3, values=[1]), ValueError, "not both"),
    "duplicate-name": (lambda m, x, y: m.int_var("x", 1, 2), ValueError, "already exists"),
    "bad-name": (lambda m, x, y: m.int_var(3, 1, 2), TypeError, "name must be a non-empty str"),
    "float-constant": (lambda m, x, y: x + 1.5, TypeError, "must be an integer, got float"),
    "float-coefficient": (lambda m, x, y: 0.5 * x, TypeError, "must be an integer, got float"),
    "other-model-constraint": (lambda m, x, y: m.add(ci.Model().int_var("w", 0, 1) <= x),
                               ValueError, "another Model"),
    "other-model-objective": (lambda m, x, y: m.minimize(ci.Model().int_var("w", 0, 1) + x),
                              ValueError, "another Model"),
    "cdiv-divisor-may-be-zero": (lambda m, x, y: m.add(ci.cdiv(10, x - 1) <= 3), ValueError,
                                 "must be positive"),
    "cdiv-constant-divisor-zero": (lambda m, x, y: ci.cdiv(7, 0), ValueError, "must be positive"),
    "divides-divisor-negative": (lambda m, x, y: m.add(ci.divides(x - 5, 30)), ValueError,
                                 "must be positive"),
    "objective-cdiv-divisor": (lambda m, x, y: m.maximize(ci.cdiv(x, y - 2)), ValueError,
                               "must be positive"),
    "add-bool": (lambda m, x, y: m.add(3 <= 4), TypeError, "plain bool"),
    "add-expression": (lambda m, x, y: m.add(x + y), TypeError, "comparison"),
    "objective-constraint": (lambda m, x, y: m.minimize(x <= y), TypeError, "is a constraint"),
    "time-limit-zero": (lambda m, x, y: m.solve(time_limit=0), ValueError, "time_limit must be > 0"),
    "time-limit-negative": (lambda m, x, y: m.solve(time_limit=-1.0), ValueError, "time_limit must be > 0"),
    "time-limit-string": (lambda m, x, y: m.solve(time_limit="1"), TypeError, "time_limit must be a number"),
    "solutions-limit-negative": (lambda m, x, y: m.solutions(limit=-1), ValueError, "limit must be >= 0"),
    "power": (lambda m, x, y: x ** 2, TypeError, r"write the product out with '\*'"),
    "true-division": (lambda m, x, y: x / 2, TypeError, "cdiv"),
    "bool-of-constraint": (lambda m, x, y: bool(x < 3), TypeError, "no truth value"),
    "if-expression": (lambda m, x, y: 1 if x + y else 0, TypeError, "no truth value"),
    "solution-unknown-name": (lambda m, x, y: m.solve()["nope"], KeyError, "nope"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=str)
def test_bad_input_raises(case):
    action, error, message = BAD_INPUT[case]
    m, x, y = _model()
    with pytest.raises(error, match=message):
        action(m, x, y)


def test_infeasible_solution_lookup_raises():
    m, x, y = _model()
    m.add(x * y >= 100)
    sol = m.solve()
    assert sol.status == "infeasible" and sol.objective is None and not sol
    with pytest.raises(LookupError, match="no solution"):
        sol[x]
    with pytest.raises(LookupError):
        sol.values


def test_expression_str():
    m, x, y = _model()
    assert str(3 * x + y * x - 2) == "3 * x + y * x - 2"
    assert str(ci.cdiv(768, y) * x >= 132) == "cdiv(768, y) * x >= 132"
    assert str(ci.divides(y, 2 * x)) == "divides(y, 2 * x)"
    assert str(-x - (y + 1)) == "-x - y - 1"
    assert str(x != y) == "x != y"


def test_constrint_imports_nothing_from_flashseq():
    import subprocess
    import sys
    code = ("import sys, constrint, constrint.cpsat; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('flashseq', 'torch')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
