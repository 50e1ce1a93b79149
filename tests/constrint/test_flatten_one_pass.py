"""The flattener's one pass: equality chains fixed in early-stopping rounds, and the variables an
`x == a * b * ...` definition reads taken from the walk that builds its propagator instead of a
second walk of the trees. Both must give what the plain algorithms give."""
import random

import constrint as ci
import constrint.definitions as D
from constrint.expr import Compare, Var
from constrint.flatten import Flat
from tests.constrint.random_models import random_model
from tests.constrint.tiling_models import fused_step_tiling_model


def _full_rounds(constraints, lo, hi, vals):
    """Reference for fix_equality_chains: whole rounds over every equality not yet used, until
    a round fixes nothing."""
    used = {}
    equalities = [c for c in constraints if type(c) is Compare and c.op == "=="]
    changed = True
    while changed:
        changed = False
        for c in equalities:
            if c in used:
                continue
            for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
                if type(side) is Var and lo[side.index] != hi[side.index]:
                    value = D._constant(other, lo, hi)
                    if value is not None:
                        i = side.index
                        if not lo[i] <= value <= hi[i] or (vals[i] is not None
                                                           and value not in vals[i]):
                            return used, True
                        lo[i] = hi[i] = value
                        vals[i] = None
                        used[c] = True
                        changed = True
                        break
    return used, False


def _chain_model(rng):
    """Equalities x_i == (expression of other x) in random order, some fixing a constant, so
    that fixing one often lets an equality listed earlier fix another (several rounds)."""
    m = ci.Model()
    xs = [m.int_var(f"x{k}", 0, 60) if rng.random() < 0.7 else
          m.int_var(f"x{k}", values=rng.sample(range(0, 61), 8)) for k in range(8)]
    for _ in range(rng.randint(3, 10)):
        x = rng.choice(xs)
        kind = rng.random()
        if kind < 0.3:
            rhs = rng.randint(0, 12)
        elif kind < 0.7:
            rhs = rng.choice(xs) + rng.randint(-3, 3)
        else:
            rhs = rng.choice(xs) * rng.choice(xs) - rng.randint(0, 5)
        m.add(x == rhs if rng.random() < 0.8 else rhs == x)
        if rng.random() < 0.2:
            m.add(x <= rng.choice(xs) + 1)  # not an equality: never used by the chains
    return m


def test_chains_fix_what_whole_rounds_fix():
    rng = random.Random("equality-chains")
    several_rounds = infeasible = 0
    for _ in range(400):
        m = _chain_model(rng)
        domains = [[v.lo for v in m.variables], [v.hi for v in m.variables],
                   [v.values for v in m.variables]]
        want = _full_rounds(m.constraints, *[list(d) for d in domains])
        lo, hi, vals = [list(d) for d in domains]
        used, bad = D.fix_equality_chains(m.constraints, lo, hi, vals)
        ref = [list(d) for d in domains]
        assert (list(used), bad) == (list(want[0]), want[1])
        if not bad:
            _full_rounds(m.constraints, *ref)
            assert [lo, hi, vals] == ref
        infeasible += bad
        # a fix that an equality listed earlier needs: the first round alone misses it
        several_rounds += _needs_second_round(m, [list(d) for d in domains])
    assert several_rounds > 20 and infeasible > 5, (several_rounds, infeasible)


def _needs_second_round(model, domains):
    """Whether one plain pass in constraint order fixes less than the chains do."""
    lo, hi, vals = domains
    fixed = 0
    for c in model.constraints:
        if type(c) is Compare and c.op == "==":
            for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
                if type(side) is Var and lo[side.index] != hi[side.index]:
                    value = D._constant(other, lo, hi)
                    if value is not None:
                        lo[side.index] = hi[side.index] = value
                        fixed += 1
                        break
    used, _ = D.fix_equality_chains(model.constraints, *[
        [v.lo for v in model.variables], [v.hi for v in model.variables],
        [v.values for v in model.variables]])
    return fixed < len(used)


def _defined_from_the_trees(model, flat):
    """defined_variables with every equality's reads taken from its trees (no walk results)."""
    candidates = [(c, None) for c in model.constraints if type(c) is Compare and c.op == "=="
                  and (type(c.lhs) is Var or type(c.rhs) is Var)]
    return D.defined_variables(candidates, flat.lo, flat.hi)


def _definitions_model(rng):
    """Equalities `x == product / cdiv / sum / variable` (either way round) over a few variables,
    cycles and repeated outputs included, some factors fixed or constant multiples."""
    m = ci.Model()
    xs = [m.int_var(f"x{k}", 1, 40) for k in range(7)]
    for _ in range(rng.randint(2, 9)):
        x = rng.choice(xs)
        kind = rng.random()
        if kind < 0.5:
            rhs = rng.choice(xs) * rng.choice(xs)
            if rng.random() < 0.5:
                rhs = rhs * (rng.choice((2, 3)) * rng.choice(xs))
        elif kind < 0.65:
            rhs = ci.cdiv(rng.choice(xs), rng.choice(xs))
        elif kind < 0.8:
            rhs = rng.choice(xs) + rng.choice(xs) * rng.choice(xs)
        elif kind < 0.9:
            rhs = rng.choice(xs)
        else:
            rhs = rng.randint(1, 4)
        m.add(x == rhs if rng.random() < 0.7 else rhs == x)
    return m


def test_defined_variables_from_the_walk_match_the_trees():
    models = [fused_step_tiling_model(objective=o, **config)[0] for o in (None, "registers")
              for config in (dict(), dict(batch=64, head_dim=256, heads=3), dict(dtype="float32"))]
    rng = random.Random("defined-variables")
    models += [_definitions_model(rng) for _ in range(400)]
    models += [random_model(rng, tiny=False) for _ in range(100)]
    nonempty = 0
    for m in models:
        flat = Flat(m)
        assert sorted(flat.defined) == sorted(_defined_from_the_trees(m, flat))
        nonempty += bool(flat.defined)
    assert nonempty > 200, nonempty


def test_product_definitions_are_not_read_a_second_time(monkeypatch):
    # the trees of `x == a * b * ...` are walked once, by the flattener; definitions reads only
    # the two `smem == heads_per_block * (a sum)` equalities (one per pass) itself. Before the
    # one-pass flattener every equality with a variable side was walked again (16 of them here)
    model = fused_step_tiling_model(objective=None)[0]
    compares = [c for c in model.constraints if type(c) is Compare]
    sides = {id(side): c for c in compares for side in (c.lhs, c.rhs)}
    reread = {}
    walk = D._free_variables

    def counting(expr, lo, hi, out):
        if id(expr) in sides:
            reread[id(sides[id(expr)])] = str(sides[id(expr)])
        return walk(expr, lo, hi, out)

    monkeypatch.setattr(D, "_free_variables", counting)
    flat = Flat(model)
    assert len(reread) == 2 and all("_smem ==" in text for text in reread.values()), reread
    assert len(flat.defined) == 16  # block_b, block_n, block_k, warps, blocks, reg_w, acc, smem
