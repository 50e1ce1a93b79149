"""Linear constraints divided through by their coefficients' gcd, the residue check of an
equality that keeps narrowing, and the trail compaction that bounds a node's memory: each
checked against brute-force enumeration or against undo without compaction."""
import random

import pytest

import constrint as ci
from constrint.domain import DomainStore
from tests.constrint.random_models import best_objective, brute_force

OPS = ("<=", ">=", "<", ">", "==", "!=")


def _key(point):
    return tuple(sorted(point.items()))


def _random_gcd_model(rng):
    """Two or three variables, linear constraints whose coefficients share a factor 2..4."""
    m = ci.Model()
    xs = []
    for k in range(rng.randint(2, 3)):
        if rng.random() < 0.3:
            xs.append(m.int_var(f"x{k}", values=rng.sample(range(-6, 14), rng.randint(1, 5))))
        else:
            lo = rng.randint(-5, 4)
            xs.append(m.int_var(f"x{k}", lo, lo + rng.randint(0, 9)))
    for _ in range(rng.randint(1, 3)):
        g = rng.randint(2, 4)
        terms = rng.sample(xs, rng.randint(1, len(xs)))
        lhs = sum(g * rng.choice((-3, -2, -1, 1, 2, 3)) * x for x in terms)
        m.add(_compare(lhs, rng.choice(OPS), rng.randint(-12, 12)))
    if rng.random() < 0.5:
        m.minimize(sum(rng.randint(-3, 3) * x for x in xs))
    return m


def _compare(lhs, op, rhs):
    return {"<=": lhs <= rhs, ">=": lhs >= rhs, "<": lhs < rhs, ">": lhs > rhs,
            "==": lhs == rhs, "!=": lhs != rhs}[op]


@pytest.mark.parametrize("seed", range(4))
def test_gcd_normalised_constraints_match_brute_force(seed):
    rng = random.Random(f"gcd-{seed}")
    infeasible = feasible = 0
    for _ in range(150):
        m = _random_gcd_model(rng)
        points = brute_force(m)
        assert sorted(map(_key, m.solutions())) == sorted(map(_key, points)), str(m)
        sol = m.solve()
        if not points:
            assert sol.status == "infeasible", str(m)
            infeasible += 1
            continue
        feasible += 1
        assert sol.status == "optimal", str(m)
        if m.objective is not None:
            assert sol.objective == best_objective(m, points), str(m)
    assert infeasible >= 10 and feasible >= 10, (infeasible, feasible)


def test_equality_residue_refutes_a_branch_without_walking_the_range():
    # 2x - 2y + z == 1 is fine for the gcd (z has coefficient 1), but each value of z is even:
    # every branch is a parity contradiction that bounds alone find by walking the whole range
    m = ci.Model()
    x, y = m.int_var("x", 0, 10 ** 6), m.int_var("y", 0, 10 ** 6)
    z = m.int_var("z", values=[0, 2, 4])
    m.add(2 * x - 2 * y + z == 1)
    sol = m.solve()
    assert sol.status == "infeasible" and sol.stats["runs"] < 100, sol.stats
    # the same with an odd value of z is feasible, and the check must not cut it off
    m = ci.Model()
    x, y = m.int_var("x", 0, 10 ** 6), m.int_var("y", 0, 10 ** 6)
    z = m.int_var("z", values=[0, 3, 4])
    m.add(2 * x - 2 * y + z == 1)
    m.minimize(x + y)
    sol = m.solve()
    assert sol.status == "optimal" and 2 * sol[x] - 2 * sol[y] + sol[z] == 1 and sol[z] == 3


def _snapshot(st):
    return list(st.lo), list(st.hi), list(st.vals)


@pytest.mark.parametrize("seed", range(3))
def test_compacted_trail_undoes_like_the_full_one(seed):
    rng = random.Random(f"compact-{seed}")
    n = 5
    st = DomainStore([0] * n, [200] * n, [None] * n)
    marks = []  # (mark, snapshot at the mark)
    for step in range(3000):
        action = rng.random()
        i = rng.randrange(n)
        if action < 0.08:
            marks.append((st.mark(), _snapshot(st)))
        elif action < 0.14 and marks:
            # undo to a random live mark; the ones above it die with it
            k = rng.randrange(len(marks))
            mark, snap = marks[k]
            del marks[k + 1:]
            st.undo(mark)
            assert _snapshot(st) == snap, step
        elif action < 0.2:
            st.compact()
        elif action < 0.6:
            st.set_lo(i, st.lo[i] + rng.randint(0, 3))
        else:
            st.set_hi(i, st.hi[i] - rng.randint(0, 3))
    while marks:
        mark, snap = marks.pop()
        st.undo(mark)
        assert _snapshot(st) == snap


def test_compact_keeps_one_entry_per_variable_since_the_mark():
    st = DomainStore([0, 0], [10 ** 6, 10 ** 6], [None, None])
    st.set_lo(0, 5)
    mark = st.mark()
    for v in range(6, 1000):
        st.set_lo(0, v)
        st.set_hi(1, 10 ** 6 - v)
    st.compact()
    assert len(st.trail) == mark + 2
    st.undo(mark)
    assert (st.lo, st.hi) == ([5, 0], [10 ** 6, 10 ** 6])
