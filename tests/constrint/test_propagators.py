"""Each propagator against brute force on random small domains: it never removes a value that
belongs to a feasible point (sound), and with every variable fixed it fails exactly when the
constraint is violated (complete on fixed points)."""
import itertools
import random

import pytest

from constrint import propagators as P
from constrint.domain import DomainStore


def _feasible(kind, params, point):
    if kind == "le":
        coefs, rhs = params
        return sum(c * v for c, v in zip(coefs, point)) <= rhs
    if kind in ("eq", "eq2"):
        coefs, rhs = params
        return sum(c * v for c, v in zip(coefs, point)) == rhs
    if kind == "ne":
        coefs, rhs = params
        return sum(c * v for c, v in zip(coefs, point)) != rhs
    if kind in ("product", "product_nonneg"):
        out = params[0] if params else 1  # ProductNonneg's constant coefficient
        for v in point[1:]:
            out *= v
        return point[0] == out
    if kind == "product_nonneg2":
        coef, = params
        return point[0] == coef * point[1] * point[2]
    if kind == "product_nonneg3":
        coef, = params
        return point[0] == coef * point[1] * point[2] * point[3]
    if kind == "cdiv":
        out, num, den = point
        return out == -(-num // den)
    if kind == "divides":
        divisor, dividend = point
        return dividend % divisor == 0
    raise AssertionError(kind)


def _random_case(rng, kind):
    """(propagator, domains as tuples of values, params) for one random instance."""
    def dom(lo, hi, size=None):
        values = sorted(rng.sample(range(lo, hi + 1), size or rng.randint(1, min(6, hi - lo + 1))))
        return tuple(values) if rng.random() < 0.5 else tuple(range(values[0], values[-1] + 1))

    if kind in ("le", "eq", "eq2", "ne"):
        n = 2 if kind == "eq2" else rng.randint(1, 3)
        doms = [dom(-6, 6) for _ in range(n)]
        coefs = [rng.choice((-3, -2, -1, 1, 2, 3)) for _ in range(n)]
        rhs = rng.randint(-10, 10)
        cls = {"le": P.LinearLe, "eq": P.LinearEq, "eq2": P.LinearEq2, "ne": P.LinearNe}[kind]
        return cls(list(range(n)), coefs, rhs), doms, (coefs, rhs)
    if kind in ("product", "product_nonneg"):
        k = rng.randint(2, 3)
        low = 0 if kind == "product_nonneg" else -4
        factors = [dom(low, 5) for _ in range(k)]
        out = dom(-30 if low else 0, 40)
        if kind == "product":
            return P.Product(0, list(range(1, k + 1))), [out] + factors, None
        # a constant coefficient: the factors fixed when the model was flattened
        coef = rng.choice((1, 1, 2, 3))
        return P.ProductNonneg(0, list(range(1, k + 1)), coef), [out] + factors, (coef,)
    if kind == "product_nonneg2":
        coef = rng.choice((1, 1, 2, 3, 8))
        return P.ProductNonneg2(0, 1, 2, coef), [dom(0, 60), dom(0, 5), dom(0, 5)], (coef,)
    if kind == "product_nonneg3":
        coef = rng.choice((1, 1, 2, 3))
        return (P.ProductNonneg3(0, 1, 2, 3, coef), [dom(0, 80), dom(0, 5), dom(0, 4), dom(0, 4)],
                (coef,))
    if kind == "cdiv":
        return P.CeilDiv(0, 1, 2), [dom(-6, 8), dom(-15, 20), dom(1, 6)], None
    if kind == "divides":
        return P.Divides(0, 1), [dom(1, 8), dom(-20, 30)], None
    raise AssertionError(kind)


KINDS = ["le", "eq", "eq2", "ne", "product", "product_nonneg", "product_nonneg2", "product_nonneg3",
         "cdiv", "divides"]


@pytest.mark.parametrize("kind", KINDS)
def test_propagator_sound_and_complete(kind):
    rng = random.Random(f"prop-{kind}")
    pruned = failed = 0
    for _ in range(400):
        prop, doms, params = _random_case(rng, kind)
        feasible = [p for p in itertools.product(*doms) if _feasible(kind, params, p)]
        st = DomainStore([d[0] for d in doms], [d[-1] for d in doms],
                         [d if len(d) != d[-1] - d[0] + 1 else None for d in doms])
        ok = prop.propagate(st)
        if not ok:
            assert not feasible, f"{kind}: failed although {feasible[0]} is feasible ({doms})"
            failed += 1
            continue
        for point in feasible:
            for i, v in enumerate(point):
                assert st.lo[i] <= v <= st.hi[i] and v in st.values_of(i), \
                    f"{kind}: removed {v} of variable {i}, needed by {point} ({doms})"
        pruned += sum(st.size(i) < len(d) for i, d in enumerate(doms))
        if all(len(d) == 1 for d in doms):
            assert feasible, f"{kind}: fixed infeasible point {doms} accepted"
    # the propagator must actually do something on these instances
    assert pruned + failed >= 20, (kind, pruned, failed)
