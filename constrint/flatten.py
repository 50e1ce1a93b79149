"""Flatten a Model's expression trees, once per solve, into the search's internal form.

Every expression becomes a polynomial {monomial: coef} over "atoms" (model variables first, then
auxiliary variables); each monomial of degree >= 2 becomes one auxiliary variable defined by a
product propagator (shared between all its occurrences), each ceiling division an auxiliary
variable defined by a CeilDiv propagator, and each comparison one linear propagator over atoms.
A constraint `x == a * b * ...` or `x == cdiv(n, d)` with x a model variable makes x itself the
propagator's output (no auxiliary variable, no equality).
"""
from math import gcd

from . import propagators as P
from .definitions import _constant, _defined_variables
from .expr import CDiv, Compare, Const, Product, Sum, Var

# Past this many monomials a product is not expanded further: the longer factor becomes one
# auxiliary variable instead, so (a + b + c) * (d + e + f) * ... cannot blow up.
_MAX_EXPANSION = 64


def linear_eq(idx, coefs, rhs):
    """The propagator of sum(coefs[k] * atom idx[k]) == rhs."""
    return (P.LinearEq2 if len(idx) == 2 else P.LinearEq)(idx, coefs, rhs)


class Flat:
    """The flattened model: domains, propagators and the variables' roles.

    lo, hi, vals: initial domains of all atoms (model variables are atoms 0..n_model-1).
    defined: model variables fixed by an equality once the others are (`x == expr`); the search
    branches on them last.
    props: propagators; defs: (kind, out, operands) for each auxiliary definition; linear_defs:
    for each linear auxiliary atom, the propagator defining it as sum(coef * atom) + const.
    objective: None or (atom, offset, sign): the model's objective equals sign * (atom + offset)
    and the search minimises the atom. infeasible: a constraint was false on constants alone.
    """

    def __init__(self, model):
        self.n_model = len(model.variables)
        variables = model.variables
        self.lo = [v.lo for v in variables]
        self.hi = [v.hi for v in variables]
        self.vals = [v.values for v in variables]
        self.props = []
        self.defs = []
        self.infeasible = False
        self._products = {}
        self._factors_of = {}  # product output atom -> its factors (atoms)
        self._cdivs = {}
        self._consts = {}
        self._poly_cache = {}
        self._linear_aux = {}
        self.linear_defs = {}  # auxiliary atom -> (propagator index, ((atom, coef), ...), const)
        self._product_outs = set()  # model variables that are the output of a product propagator
        used = self._fix_equality_chains(model)
        for constraint in model.constraints:
            if id(constraint) not in used:
                self._add_constraint(constraint)
        self.defined = _defined_variables(model, self.lo, self.hi)
        self.objective = None
        self.objective_const = None
        if model.objective is not None:
            expr, sense = model.objective
            self._set_objective(expr, 1 if sense == "min" else -1)

    # ---- equality chains ------------------------------------------------------------------
    def _fix_equality_chains(self, model):
        """Fix every variable that an `x == expr` constraint sets to a constant, transitively
        (`batch == 16`, then `rows == gates * head_dim` once both are known), before anything
        is flattened: the constants then fold into every expression that reads them (fewer
        products, shorter sums) and those constraints become checks on constants. A value
        outside x's domain makes the model infeasible. Returns the ids of the constraints that
        fixed a variable (they hold by construction: nothing is left to flatten of them)."""
        lo, hi = self.lo, self.hi
        used = set()
        pending = [c for c in model.constraints if type(c) is Compare and c.op == "=="
                   and (type(c.lhs) is Var or type(c.rhs) is Var)]
        while pending:
            left = []
            for c in pending:
                for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
                    if type(side) is Var and lo[side.index] != hi[side.index]:
                        value = _constant(other, lo, hi)
                        if value is not None:
                            break
                else:
                    # still open while a side is an unfixed variable (a loop, not any(): this
                    # runs for most constraints of a model, twice)
                    x, y = c.lhs, c.rhs
                    if ((type(x) is Var and lo[x.index] != hi[x.index])
                            or (type(y) is Var and lo[y.index] != hi[y.index])):
                        left.append(c)
                    continue
                i = side.index
                vals = self.vals[i]
                if not lo[i] <= value <= hi[i] or (vals is not None and value not in vals):
                    self.infeasible = True
                    return used
                lo[i] = hi[i] = value
                self.vals[i] = None
                used.add(id(c))
            if len(left) == len(pending):
                break
            pending = left
        return used

    def _restrict(self, i, lo, hi):
        """Narrow atom i's initial domain to [lo, hi] (empty: the model is infeasible)."""
        lo, hi = max(lo, self.lo[i]), min(hi, self.hi[i])
        vals = self.vals[i]
        if vals is not None:
            vals = tuple(v for v in vals if lo <= v <= hi)
            if vals:
                lo, hi = vals[0], vals[-1]
            self.vals[i] = vals if len(vals) > 1 else None
        if lo > hi or vals == ():
            self.infeasible = True
            return
        self.lo[i], self.hi[i] = lo, hi

    # ---- atoms --------------------------------------------------------------------------
    def _new_atom(self, lo, hi, vals=None):
        self.lo.append(lo)
        self.hi.append(hi)
        self.vals.append(vals)
        return len(self.lo) - 1

    def _const_atom(self, value):
        atom = self._consts.get(value)
        if atom is None:
            atom = self._consts[value] = self._new_atom(value, value)
        return atom

    def _product_atom(self, mono):
        atom = self._products.get(mono)
        if atom is not None:
            return atom
        lo, hi = self.lo, self.hi
        plo = phi = 1
        for i in mono:
            if lo[i] < 0:
                break
            plo *= lo[i]
            phi *= hi[i]
        else:
            atom = self._products[mono] = self._new_atom(plo, phi)
            self._factors_of[atom] = mono
            self.props.append(P.product_nonneg(atom, mono, lo, hi))
            self.defs.append(("product", atom, mono))
            return atom
        plo = phi = 1
        for i in mono:
            plo, phi = P._mul_interval(plo, phi, lo[i], hi[i])
        atom = self._products[mono] = self._new_atom(plo, phi)
        self._factors_of[atom] = mono
        self.props.append(P.Product(atom, mono))
        self.defs.append(("product", atom, mono))
        return atom

    def _atom_of(self, poly):
        """One atom equal to the polynomial (an existing one where possible)."""
        if not poly:
            return self._const_atom(0)
        if len(poly) == 1:
            (mono, coef), = poly.items()
            if mono == ():
                return self._const_atom(coef)
            if coef == 1:
                return mono[0] if len(mono) == 1 else self._product_atom(mono)
        terms, const = self._linear(poly)
        key = (tuple(sorted(terms.items())), const)
        atom = self._linear_aux.get(key)
        if atom is not None:
            return atom
        lo = hi = const
        for i, a in terms.items():
            lo += a * self.lo[i] if a > 0 else a * self.hi[i]
            hi += a * self.hi[i] if a > 0 else a * self.lo[i]
        atom = self._linear_aux[key] = self._new_atom(lo, hi)
        idx = list(terms) + [atom]
        coefs = list(terms.values()) + [-1]
        self.linear_defs[atom] = (len(self.props), tuple(terms.items()), const)
        self.props.append(linear_eq(idx, coefs, -const))
        self.defs.append(("linear", atom, tuple(terms.items())))
        return atom

    def _cdiv_atom(self, node):
        num = self._atom_of(self._poly(node.num))
        den = self._atom_of(self._poly(node.den))
        if self.lo[den] <= 0:
            raise ValueError(f"cdiv divisor {node.den} may be {self.lo[den]} (its domain admits "
                             "values <= 0); divisors must be positive")
        key = (num, den)
        atom = self._cdivs.get(key)
        if atom is not None:
            return atom
        n_lo, n_hi, d_lo, d_hi = self.lo[num], self.hi[num], self.lo[den], self.hi[den]
        lo = P._ceil_div(n_lo, d_hi if n_lo >= 0 else d_lo)
        hi = P._ceil_div(n_hi, d_lo if n_hi >= 0 else d_hi)
        atom = self._cdivs[key] = self._new_atom(lo, hi)
        self.props.append(P.CeilDiv(atom, num, den))
        self.defs.append(("cdiv", atom, (num, den)))
        return atom

    # ---- polynomials ----------------------------------------------------------------------
    def _poly(self, expr):
        """{monomial (sorted tuple of atoms): coef} equal to expr (callers must not modify it)."""
        kind = type(expr)
        if kind is Var:
            # a variable with one value is a constant: products and sums with it fold away
            value = self.lo[expr.index]
            if value == self.hi[expr.index]:
                return {(): value} if value else {}
            return {(expr.index,): 1}
        if kind is Const:
            return {(): expr.value} if expr.value else {}
        key = id(expr)
        cached = self._poly_cache.get(key)
        if cached is not None:
            return cached[1]
        if kind is Sum:
            out = {(): expr.const} if expr.const else {}
            for coef, sub in expr.items:
                for mono, c in self._poly(sub).items():
                    out[mono] = out.get(mono, 0) + coef * c
            out = {m: c for m, c in out.items() if c}
        elif kind is Product:
            factors = expr.factors
            out = self._monomial(factors)
            if out is not None:
                self._poly_cache[key] = (expr, out)
                return out
            out = self._poly(factors[0])
            if len(out) > _MAX_EXPANSION:  # as 1 * first factor: too long, one atom
                out = self._multiply({(): 1}, out)
            for factor in factors[1:]:
                out = self._multiply(out, self._poly(factor))
        elif kind is CDiv:
            out = {(self._cdiv_atom(expr),): 1}
        else:
            raise TypeError(f"not a constrint expression: {expr!r}")
        self._poly_cache[key] = (expr, out)  # keep expr alive so its id stays unique
        return out

    def _monomial(self, factors):
        """The polynomial of a product of variables and constants only (a tiling model's
        `count * size`), built directly: the same {sorted atoms: coef} that multiplying the
        factors' polynomials one by one gives, without a dict per factor and per step. None
        when a factor is anything else."""
        lo, hi = self.lo, self.hi
        coef, atoms = 1, []
        for f in factors:
            kind = type(f)
            if kind is Var:
                i = f.index
                if lo[i] == hi[i]:
                    coef *= lo[i]
                else:
                    atoms.append(i)
            elif kind is Const:
                coef *= f.value
            else:
                return None
        if not coef:
            return {}
        atoms.sort()
        return {tuple(atoms): coef}

    def _multiply(self, p, q):
        if len(p) == 1 and len(q) == 1:  # monomial times monomial: most products of a model
            (m1, c1), = p.items()
            (m2, c2), = q.items()
            mono = tuple(sorted(m1 + m2)) if m1 and m2 else m1 or m2
            return {mono: c1 * c2} if c1 * c2 else {}
        if len(p) * len(q) > _MAX_EXPANSION:
            if len(p) >= len(q) and len(p) > 1:
                p = {(self._atom_of(p),): 1}
            elif len(q) > 1:
                q = {(self._atom_of(q),): 1}
        out = {}
        for m1, c1 in p.items():
            for m2, c2 in q.items():
                mono = tuple(sorted(m1 + m2)) if m1 and m2 else m1 or m2
                out[mono] = out.get(mono, 0) + c1 * c2
        return {m: c for m, c in out.items() if c}

    def _linear(self, poly):
        """({atom: coef}, const) with each monomial of degree >= 2 replaced by its product atom."""
        terms = {}
        const = 0
        for mono, coef in poly.items():
            if not mono:
                const += coef
                continue
            atom = mono[0] if len(mono) == 1 else self._product_atom(mono)
            terms[atom] = terms.get(atom, 0) + coef
        if 0 in terms.values():  # terms that cancelled (rare: the copy is skipped otherwise)
            terms = {a: c for a, c in terms.items() if c}
        return terms, const

    # ---- constraints and objective ----------------------------------------------------------
    def _add_constraint(self, constraint):
        is_compare = type(constraint) is Compare
        if is_compare and constraint.op == "==" and self._product_as_var(constraint):
            return
        if is_compare:
            op = constraint.op
            left = self._poly(constraint.lhs)
            right = self._poly(constraint.rhs)
            if right and not left.keys().isdisjoint(right):
                # a monomial on both sides: subtract first (if it cancels, it needs no atom)
                diff = dict(left)
                for mono, c in right.items():
                    diff[mono] = diff.get(mono, 0) - c
                left, right = {m: c for m, c in diff.items() if c}, {}
            # constraint: sum(terms) op rhs, with >= and > turned around into <= and <
            sign = -1 if op == ">=" or op == ">" else 1
            terms = {}
            rhs = 0
            get = terms.get
            for mono, c in left.items():
                if mono:
                    atom = mono[0] if len(mono) == 1 else self._product_atom(mono)
                    terms[atom] = get(atom, 0) + sign * c
                else:
                    rhs -= sign * c
            for mono, c in right.items():
                if mono:
                    atom = mono[0] if len(mono) == 1 else self._product_atom(mono)
                    terms[atom] = get(atom, 0) - sign * c
                else:
                    rhs += sign * c
            if 0 in terms.values():  # terms that cancelled (a monomial that is a variable)
                terms = {a: c for a, c in terms.items() if c}
            if op == "<" or op == ">":
                rhs -= 1
            if not terms:
                ok = (0 == rhs) if op == "==" else (0 != rhs) if op == "!=" else (0 <= rhs)
                self.infeasible |= not ok
                return
            g = gcd(*terms.values())
            if g > 1:
                # divide through by the coefficients' gcd: 2x - 2y == 1 has no integer point (bounds
                # alone would creep one step a pass across the whole range to find that), 2x + 4y
                # <= 7 is x + 2y <= 3, and 2x != 3 always holds
                if rhs % g and (op == "==" or op == "!="):
                    self.infeasible |= op == "=="
                    return
                terms = {a: c // g for a, c in terms.items()}
                rhs //= g
            if len(terms) == 1 and op != "!=":
                # one atom: a bound (or a value) of its domain, not a propagator
                (i, a), = terms.items()
                if op == "==":
                    self._restrict(i, rhs * a, rhs * a)  # a is 1 or -1 after the gcd
                elif a > 0:
                    self._restrict(i, self.lo[i], rhs // a)
                else:
                    self._restrict(i, -(rhs // -a), self.hi[i])
                return
            cls = linear_eq if op == "==" else P.LinearNe if op == "!=" else P.LinearLe
            self.props.append(cls(list(terms), list(terms.values()), rhs))
        else:
            divisor = self._atom_of(self._poly(constraint.divisor))
            dividend = self._atom_of(self._poly(constraint.dividend))
            if self.lo[divisor] <= 0:
                raise ValueError(f"divides divisor {constraint.divisor} may be {self.lo[divisor]} "
                                 "(its domain admits values <= 0); divisors must be positive")
            # a product with the divisor among its factors is a multiple of it by construction
            # (`divides(frag, block)` with `block == frag * warps * loop`): no propagator, whose
            # runs were a tenth of a FlashRNN-class first point's and narrowed little
            factors = self._factors_of.get(dividend)
            if factors is not None and divisor in factors:
                return
            if self.lo[divisor] == self.hi[divisor]:
                if self.lo[dividend] == self.hi[dividend]:  # two constants: a check, here
                    self.infeasible |= self.lo[dividend] % self.lo[divisor] != 0
                    return
                self._check_residue(self.lo[divisor], self._poly(constraint.dividend))
            self.props.append(P.Divides(divisor, dividend))

    def _product_as_var(self, constraint):
        """`x == a * b * ...` (one monomial, coefficient 1): the product propagator writes x
        itself instead of an auxiliary atom tied to x by an equality, one hop less on every
        propagation path through it. On the 7 FlashRNN-class models (tile = count * size
        chains): propagator runs -18%, CPU time 0.87x to a first point and 0.81x to a proven
        optimum (median per-model paired ratios); plan models within noise. True when done."""
        for side, other in ((constraint.lhs, constraint.rhs), (constraint.rhs, constraint.lhs)):
            if (type(side) is not Var or self.lo[side.index] == self.hi[side.index]
                    or side.index in self._product_outs):
                continue
            kind = type(other)
            if kind is CDiv:
                return self._cdiv_as_var(side.index, other)
            # a product of variables and constants (the common case) straight to its monomial
            poly = self._monomial(other.factors) if kind is Product else None
            if poly is None:
                poly = self._poly(other)
            if len(poly) != 1:
                return False
            (mono, coef), = poly.items()
            if coef < 1 or len(mono) < 2 - (coef > 1) or side.index in mono:
                return False
            if coef == 1 and mono in self._products:
                return False
            x = side.index
            if coef == 1:
                self._products[mono] = x
            else:
                # x == c * a * b: the constant is one more factor (a single-valued variable folds
                # into such a coefficient); one propagator, and the objective's direction reaches
                # a, b through it (Flat.value_preference)
                mono = mono + (self._const_atom(coef),)
            self._product_outs.add(x)
            self._factors_of[x] = mono
            lo = self.lo
            for i in mono:
                if lo[i] < 0:
                    self.props.append(P.Product(x, mono))
                    break
            else:
                self.props.append(P.product_nonneg(x, mono, lo, self.hi))
            self.defs.append(("product", x, mono))
            return True
        return False

    def _cdiv_as_var(self, x, node):
        """`x == cdiv(n, d)`: the CeilDiv propagator writes x (as _product_as_var; on the 5
        flashrnn_like_model configurations: propagator runs -7%, CPU time 0.91x, median
        per-model paired ratio)."""
        num = self._atom_of(self._poly(node.num))
        den = self._atom_of(self._poly(node.den))
        if self.lo[den] <= 0:
            raise ValueError(f"cdiv divisor {node.den} may be {self.lo[den]} (its domain admits "
                             "values <= 0); divisors must be positive")
        if (num, den) in self._cdivs or x in (num, den):
            return False
        self._cdivs[(num, den)] = x
        self._product_outs.add(x)
        self.props.append(P.CeilDiv(x, num, den))
        self.defs.append(("cdiv", x, (num, den)))
        return True

    def _check_residue(self, divisor, dividend):
        """A constant divisor d of sum(a_i * t_i) + c: g = gcd(d, a_i...) divides the sum's terms
        and d, so it must divide c (2x + 2y + 5 is odd: no multiple of 6). Bounds reasoning
        alone finds this only by enumerating."""
        terms, const = self._linear(dividend)
        g = divisor
        for coef in terms.values():
            g = gcd(g, coef)
        if const % g:
            self.infeasible = True

    def _set_objective(self, expr, sign):
        poly = {m: sign * c for m, c in self._poly(expr).items()}
        terms, const = self._linear(poly)
        if not terms:
            self.objective_const = sign * const
            return
        if len(terms) == 1 and next(iter(terms.values())) == 1:
            atom = next(iter(terms))
        else:
            atom = self._atom_of({(a,): c for a, c in terms.items()})
        self.objective = (atom, const, sign)

    def value_preference(self, lo=None):
        """Per atom: +1 if the objective tends to grow with it (try low values first), -1 if it
        tends to shrink (try high values first), 0 if unknown (see value_preference)."""
        return value_preference(self.defs, self.objective, self.lo if lo is None else lo)


def value_preference(defs, objective, lo):
    """Per atom: +1 if the minimised objective atom tends to grow with it (try low values first),
    -1 if it tends to shrink (try high values first), 0 if unknown. A heuristic for value order
    only, read off the definitions (defs, newest last) from the objective atom down.

    lo: the atoms' lower bounds to judge signs by; the search passes the root's propagated ones,
    where far more products are known non-negative than in the declared domains (on the
    FlashRNN-class models the register objective then reaches the cached-fragment counts)."""
    weight = [0] * len(lo)
    if objective is None:
        return weight
    weight[objective[0]] = 1
    for kind, out, operands in reversed(defs):
        s = weight[out]
        if not s:
            continue
        if kind == "linear":
            for atom, coef in operands:
                weight[atom] += s if coef > 0 else -s
        elif kind == "product":
            # with every factor >= 0 the product does not fall as any one factor grows
            if all(lo[i] >= 0 for i in operands):
                for atom in operands:
                    weight[atom] += s
        else:
            num, den = operands
            weight[num] += s
            if lo[num] >= 0:
                weight[den] -= s
    return [(w > 0) - (w < 0) for w in weight]
