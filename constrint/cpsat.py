"""Translate a constrint Model into an OR-Tools CP-SAT model, for cross-checking and benchmarks.

Needs the optional `ortools` package; flashseq never imports this module at run time.
The translation walks the expression trees itself (it shares no flattening code with the
solver, so the cross-check is independent): products become chains of binary multiplication
equalities, cdiv(n, d) = z becomes `n <= z * d <= n + d - 1`, divides(a, b) becomes `b == k * a`.
"""
from .expr import CDiv, Compare, Const, Product, Sum, Var
from .model import Model, Solution, _deadline, _interval

# CP-SAT works in int64 and rejects models whose linear sums may overflow; auxiliary variables
# are clamped to this range, which drops only points whose intermediate values exceed it.
AUX_BOUND = 1 << 53


def _cp_model():
    try:
        from ortools.sat.python import cp_model
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("constrint.cpsat needs OR-Tools: pip install ortools") from err
    return cp_model


class _Translator:
    def __init__(self, model, cp_model):
        self.cp = cp_model
        self.m = cp_model.CpModel()
        self.vars = {}
        for v in model.variables:
            if v.values is None:
                self.vars[v.name] = self.m.new_int_var(v.lo, v.hi, v.name)
            else:
                dom = cp_model.Domain.from_values(list(v.values))
                self.vars[v.name] = self.m.new_int_var_from_domain(dom, v.name)
        self._count = 0

    def _aux(self, lo, hi, tag):
        self._count += 1
        lo = max(lo, -AUX_BOUND)
        hi = min(hi, AUX_BOUND)
        return self.m.new_int_var(lo, hi, f"_{tag}{self._count}")

    def _as_var(self, expr):
        """A CP-SAT IntVar (or int) equal to expr."""
        if isinstance(expr, Var):
            return self.vars[expr.name]
        if isinstance(expr, Const):
            return expr.value
        lo, hi = _interval(expr)
        aux = self._aux(lo, hi, "e")
        self.m.add(aux == self.linear(expr))
        return aux

    def linear(self, expr):
        """A CP-SAT linear expression (or int) equal to expr."""
        if isinstance(expr, Const):
            return expr.value
        if isinstance(expr, Var):
            return self.vars[expr.name]
        if isinstance(expr, Sum):
            return sum(coef * self.linear(sub) for coef, sub in expr.items) + expr.const
        if isinstance(expr, Product):
            acc = self._as_var(expr.factors[0])
            lo, hi = _interval(expr.factors[0])
            for factor in expr.factors[1:]:
                f_lo, f_hi = _interval(factor)
                corners = (lo * f_lo, lo * f_hi, hi * f_lo, hi * f_hi)
                lo, hi = min(corners), max(corners)
                out = self._aux(lo, hi, "p")
                self.m.add_multiplication_equality(out, [acc, self._as_var(factor)])
                acc = out
            return acc
        if isinstance(expr, CDiv):
            num = self.linear(expr.num)
            den = self._as_var(expr.den)
            z_lo, z_hi = _interval(expr)
            d_lo, d_hi = _interval(expr.den)
            z = self._aux(z_lo, z_hi, "q")
            corners = (z_lo * d_lo, z_lo * d_hi, z_hi * d_lo, z_hi * d_hi)
            zd = self._aux(min(corners), max(corners), "qd")
            self.m.add_multiplication_equality(zd, [z, den])
            self.m.add(zd >= num)
            self.m.add(zd <= num + den - 1)
            return z
        raise TypeError(f"not a constrint expression: {expr!r}")

    def constraint(self, c):
        if isinstance(c, Compare):
            lhs, rhs = self.linear(c.lhs), self.linear(c.rhs)
            op = c.op
            if isinstance(lhs, int) and isinstance(rhs, int):
                if not c.is_satisfied({}):
                    self.m.add_bool_or([])  # an empty clause: the model is infeasible
                return
            built = {"<=": lhs <= rhs, ">=": lhs >= rhs, "<": lhs < rhs, ">": lhs > rhs,
                     "==": lhs == rhs, "!=": lhs != rhs}[op]
            self.m.add(built)
        else:
            a = self._as_var(c.divisor)
            b = self._as_var(c.dividend)
            a_lo, _ = _interval(c.divisor)
            b_lo, b_hi = _interval(c.dividend)
            k_max = max(abs(b_lo), abs(b_hi)) // max(a_lo, 1)
            k = self._aux(-k_max, k_max, "k")
            self.m.add_multiplication_equality(b, [k, a])


def to_cpsat(model):
    """Translate `model` into (CpModel, {name: IntVar}) with the same feasible points and objective."""
    if not isinstance(model, Model):
        raise TypeError(f"to_cpsat expects a constrint.Model, got {type(model).__name__}")
    tr = _Translator(model, _cp_model())
    for c in model.constraints:
        tr.constraint(c)
    if model.objective is not None:
        expr, sense = model.objective
        obj = tr.linear(expr)
        (tr.m.minimize if sense == "min" else tr.m.maximize)(obj)
    return tr.m, tr.vars


def solve(model, time_limit=None, workers=1):
    """Solve `model` with CP-SAT; returns a constrint Solution with the same status conventions.

    workers: CP-SAT search workers (1 keeps it deterministic and light on shared machines).
    """
    _deadline(time_limit)  # same validation as Model.solve
    cp_model = _cp_model()
    cpm, variables = to_cpsat(model)
    solver = cp_model.CpSolver()
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.num_workers = workers
    status = solver.solve(cpm)
    if status == cp_model.MODEL_INVALID:
        raise ValueError(f"CP-SAT rejected the translated model: {cpm.validate()}")
    if status == cp_model.INFEASIBLE:
        return Solution("infeasible")
    if status == cp_model.UNKNOWN:
        return Solution("unknown")
    values = {name: int(solver.value(v)) for name, v in variables.items()}
    if model.objective is None:
        return Solution("optimal", values, None)
    objective = model.objective[0].evaluate(values)  # exact, unlike the float objective_value
    return Solution("optimal" if status == cp_model.OPTIMAL else "feasible", values, objective)
