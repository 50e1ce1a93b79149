"""Divisibility constraints the flattening settles itself: a divisor that is a factor of the
dividend's defining product holds by construction, and two constants are checked once. Neither
may leave a Divides propagator behind, and the solutions must stay those of brute force."""
import random

import constrint as ci
from constrint import propagators as P
from constrint.flatten import Flat
from tests.constrint.random_models import brute_force


def _key(point):
    return tuple(sorted(point.items()))


def _divides_props(model):
    return [p for p in Flat(model).props if type(p) is P.Divides]


def test_divisor_among_the_product_factors_needs_no_propagator():
    m = ci.Model()
    frag = m.int_var("frag", values=(2, 3, 4))
    warps = m.int_var("warps", 1, 4)
    block = m.int_var("block", 1, 40)
    m.add(block == frag * warps)
    m.add(ci.divides(frag, block))
    m.add(block >= 7)
    assert _divides_props(m) == []
    want = sorted(_key(p) for p in brute_force(m))
    assert want and sorted(_key(p) for p in m.solutions()) == want


def test_constant_divides_constant_is_checked_when_flattened():
    for n, d, feasible in ((12, 4, True), (12, 5, False)):
        m = ci.Model()
        a = m.int_var("a", 1, 20)
        b = m.int_var("b", 1, 20)
        m.int_var("x", 0, 3)  # free: 4 points when feasible
        m.add(a == d)
        m.add(b == n)
        m.add(ci.divides(a, b))
        assert _divides_props(m) == []
        assert bool(m.solve()) is feasible
        assert len(list(m.solutions())) == (4 if feasible else 0)


def test_random_products_with_divisibility_match_brute_force():
    rng = random.Random("flatten-divides")
    settled = checked = 0
    for _ in range(150):
        m = ci.Model()
        xs = [m.int_var(f"x{k}", rng.randint(1, 2), rng.randint(2, 6)) for k in range(3)]
        out = m.int_var("out", 0, 60)
        k = rng.randint(2, 3)
        m.add(out == _product(xs[:k]))
        # the divisor: one of the factors (settled when flattened) or another variable
        if rng.random() < 0.5:
            divisor = xs[rng.randrange(k)]
        else:
            divisor = m.int_var("d", 1, rng.randint(1, 5))
        m.add(ci.divides(divisor, out))
        if rng.random() < 0.5:
            m.add(out >= rng.randint(1, 30))
        settled += not _divides_props(m)
        want = sorted(_key(p) for p in brute_force(m))
        got = sorted(_key(p) for p in m.solutions())
        assert got == want, str(m)
        assert bool(m.solve()) == bool(want)
        checked += bool(want)
    assert checked >= 30 and 30 <= settled <= 120, (checked, settled)


def _product(factors):
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out
