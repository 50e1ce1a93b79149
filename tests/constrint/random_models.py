"""Random constrint models for the cross-checks: ranges, value sets, products, cdiv, divides,
comparisons of every kind and objectives min/max/none; small enough to enumerate by brute force
when `tiny` is set."""
import itertools

import constrint as ci


def random_model(rng, tiny=True):
    """A random Model; with `tiny`, at most a few thousand points so brute force is cheap."""
    m = ci.Model()
    objective = add_random_part(rng, m, "x", tiny)
    if objective is not None:
        expr, sense = objective
        (m.minimize if sense == "min" else m.maximize)(expr)
    return m


def add_random_part(rng, m, prefix, tiny=True):
    """Add random variables (named prefix + k) and constraints over them to `m`; return a random
    objective over them as (expression, "min" | "max"), or None."""
    n_vars = rng.randint(1, 3) if tiny else rng.randint(2, 5)
    span = 8 if tiny else 40
    variables, positive = [], []
    for k in range(n_vars):
        kind = rng.random()
        if kind < 0.45:
            lo = rng.randint(-4, 6)
            v = m.int_var(f"{prefix}{k}", lo, lo + rng.randint(0, span))
        elif kind < 0.75:
            values = rng.sample(range(-8, 3 * span), rng.randint(1, 6 if tiny else 12))
            v = m.int_var(f"{prefix}{k}", values=values)
        else:
            top = 7 if tiny else 20
            values = [2 ** e for e in rng.sample(range(top), rng.randint(1, top))]
            v = m.int_var(f"{prefix}{k}", values=values)
        variables.append(v)
        if (v.values[0] if v.values else v.lo) > 0:
            positive.append(v)

    def divisor():
        choice = rng.random()
        if positive and choice < 0.6:
            return rng.choice(positive)
        if positive and choice < 0.8:
            return rng.choice(positive) + rng.randint(0, 3)
        return rng.randint(1, 9)

    def atom():
        choice = rng.random()
        if choice < 0.45:
            return rng.choice(variables)
        if choice < 0.7:
            k = rng.randint(2, 3)
            out = rng.choice(variables)
            for _ in range(k - 1):
                out = out * rng.choice(variables)
            return out
        if choice < 0.9:
            return ci.cdiv(rng.choice(variables) * rng.randint(-3, 9) + rng.randint(-5, 30), divisor())
        return rng.randint(-20, 60)

    def expression():
        out = rng.randint(-2, 3) * atom()
        for _ in range(rng.randint(0, 2)):
            out = out + rng.choice((-2, -1, 1, 1, 3)) * atom()
        return out + rng.randint(-10, 10)

    # most comparisons are chosen true at a random witness point, so most models are feasible
    witness = {v.name: rng.choice(domain(v)) for v in variables}
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.25:
            dividend = expression() if rng.random() < 0.5 else rng.choice((12, 24, 30, 64, 96, 768))
            m.add(ci.divides(divisor(), dividend))
        else:
            lhs, rhs = expression(), rng.choice((expression(), rng.randint(-30, 200)))
            if not isinstance(lhs, ci.expr.Expr) and not isinstance(rhs, ci.expr.Expr):
                lhs = lhs + variables[0]
            ops = ("<=", ">=", "<", ">", "==", "!=")
            if rng.random() < 0.8:
                ops = [op for op in ops if _compare(lhs, op, rhs).is_satisfied(witness)]
            m.add(_compare(lhs, rng.choice(ops), rhs))
    sense = rng.choice(("min", "max", None))
    if sense == "min":
        return expression() + variables[-1], "min"
    if sense == "max":
        return expression() - variables[0], "max"
    return None


def _compare(lhs, op, rhs):
    lhs = ci.expr.as_expr(lhs)
    return {"<=": lhs <= rhs, ">=": lhs >= rhs, "<": lhs < rhs, ">": lhs > rhs,
            "==": lhs == rhs, "!=": lhs != rhs}[op]


def domain(var):
    return var.values if var.values is not None else range(var.lo, var.hi + 1)


def brute_force(model):
    """Every feasible point of `model` as a list of {name: int}, by plain evaluation."""
    names = [v.name for v in model.variables]
    points = []
    for combo in itertools.product(*(domain(v) for v in model.variables)):
        point = dict(zip(names, combo))
        if all(c.is_satisfied(point) for c in model.constraints):
            points.append(point)
    return points


def is_feasible(model, point):
    """Plain re-check: the point lies in every domain and satisfies every constraint."""
    for v in model.variables:
        if point[v.name] not in domain(v):
            return False
    return all(c.is_satisfied(point) for c in model.constraints)


def best_objective(model, points):
    """The optimum over `points` (None when there are none or there is no objective)."""
    if not points or model.objective is None:
        return None
    expr, sense = model.objective
    values = [expr.evaluate(p) for p in points]
    return min(values) if sense == "min" else max(values)
