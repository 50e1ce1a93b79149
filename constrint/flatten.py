"""Flatten a Model's expression trees, once per solve, into the search's internal form.

Every expression becomes a polynomial {monomial: coef} over "atoms" (model variables first, then
auxiliary variables); each monomial of degree >= 2 becomes one auxiliary variable defined by a
product propagator (shared between all its occurrences), each ceiling division an auxiliary
variable defined by a CeilDiv propagator, and each comparison one linear propagator over atoms.
A constraint `x == a * b * ...` or `x == cdiv(n, d)` with x a model variable makes x itself the
propagator's output (no auxiliary variable, no equality).

One pass: the equality chains are fixed first (definitions.fix_equality_chains), then each
constraint's trees are walked once, creating its atoms and propagators as they are met. The
common shapes of a tiling model (`x <= c`, `a * b == c`, `x == a * b * ...`) skip the
polynomials altogether, and the variables an `x == a * b * ...` definition reads are noted on
the way for definitions.defined_variables (no second walk).
"""
from math import gcd

from . import propagators as P
from .definitions import defined_variables, fix_equality_chains, value_preference
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
        variables = model.variables
        self.n_model = len(variables)
        self.lo = [v.lo for v in variables]
        self.hi = [v.hi for v in variables]
        self.vals = [v.values for v in variables]
        self.props = []
        self.defs = []
        self._products = {}
        self._factors_of = {}  # product output atom -> its factors (atoms)
        self._cdivs = {}
        self._consts = {}
        self._poly_cache = {}
        self._linear_aux = {}
        self.linear_defs = {}  # auxiliary atom -> (propagator index, ((atom, coef), ...), const)
        # model variables that are the output of a product propagator (a dict, as every set
        # here: one kind of container less for a solve's first, cache-cold pass)
        self._product_outs = {}
        constraints = model.constraints
        used, self.infeasible = fix_equality_chains(constraints, self.lo, self.hi, self.vals)
        # one walk of each constraint's trees builds its propagators and, for `x == expr`,
        # notes what definitions.defined_variables needs (the equality and, where the walk
        # saw them, the variables its product side reads) instead of a second walk of the trees
        candidates = []
        for c in constraints:
            if type(c) is not Compare:
                self._add_divides(c)
                continue
            op, lhs, rhs = c.op, c.lhs, c.rhs
            if op == "==":
                if c in used:
                    continue
                if type(lhs) is Product and self._product_equals_constant(lhs, rhs):
                    continue
                if type(lhs) is Var or type(rhs) is Var:
                    done, reads = self._product_as_var(lhs, rhs)
                    candidates.append((c, reads))
                    if done:
                        continue
            elif op != "!=" and self._bound(lhs, op, rhs):
                continue
            self._add_compare(lhs, op, rhs)
        self.defined = defined_variables(candidates, self.lo, self.hi)
        self.objective = None
        self.objective_const = None
        if model.objective is not None:
            expr, sense = model.objective
            self._set_objective(expr, 1 if sense == "min" else -1)

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
        lo = self.lo
        atom = len(lo)
        prop, plo, phi = self._product_prop(atom, mono)
        self._products[mono] = atom
        lo.append(plo)  # a new atom (as _new_atom)
        self.hi.append(phi)
        self.vals.append(None)
        self._factors_of[atom] = mono
        self.props.append(prop)
        self.defs.append(("product", atom, mono))
        return atom

    def _product_prop(self, out, factors):
        """(the propagator of out == product of `factors`, the product's bounds), from one walk
        over the factors' bounds: with every factor >= 0 the factors fixed now fold into one
        constant coefficient and two or three others make a ProductNonneg2 or 3 (as
        propagators.product_nonneg), else interval arithmetic (Product)."""
        lo, hi = self.lo, self.hi
        coef = plo = phi = 1
        free = []
        for i in factors:
            a = lo[i]
            if a < 0:
                break
            b = hi[i]
            plo *= a
            phi *= b
            if a == b:
                coef *= a
            else:
                free.append(i)
        else:
            if coef >= 1:
                n = len(free)
                if n == 2:
                    return P.ProductNonneg2(out, free[0], free[1], coef), plo, phi
                if n == 3:
                    return P.ProductNonneg3(out, free[0], free[1], free[2], coef), plo, phi
                if n > 3:
                    return P.ProductNonneg(out, free, coef), plo, phi
            return P.ProductNonneg(out, factors), plo, phi
        plo = phi = 1
        for i in factors:
            plo, phi = P._mul_interval(plo, phi, lo[i], hi[i])
        return P.Product(out, factors), plo, phi

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
            # the variables among the items inline, not a dict each
            lo, hi = self.lo, self.hi
            out = {(): expr.const} if expr.const else {}
            get = out.get
            for coef, sub in expr.items:
                if type(sub) is Var:
                    i = sub.index
                    value = lo[i]
                    if value != hi[i]:
                        mono = (i,)
                        out[mono] = get(mono, 0) + coef
                    elif value:
                        out[()] = get((), 0) + coef * value
                    continue
                for mono, c in self._poly(sub).items():
                    out[mono] = get(mono, 0) + coef * c
            if 0 in out.values():
                out = {m: c for m, c in out.items() if c}
        elif kind is Product:
            factors = expr.factors
            parts = self._monomial(factors)
            if parts is not None:
                coef, atoms = parts
                out = {tuple(atoms): coef} if coef else {}
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
        """(coef, sorted list of the unfixed variables) of a product of variables, constants and
        constant multiples of one variable (`2 * warps`) only: a tiling model's `count * size`,
        the same {tuple(atoms): coef} that multiplying the factors' polynomials one by one
        gives, without a dict per factor and per step. None when a factor is anything else."""
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
            elif kind is Sum and not f.const and len(f.items) == 1 and type(f.items[0][1]) is Var:
                c, var = f.items[0]
                i = var.index
                if lo[i] == hi[i]:
                    coef *= c * lo[i]
                else:
                    coef *= c
                    atoms.append(i)
            else:
                return None
        atoms.sort()
        return coef, atoms

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
        # one side a single monomial (`heads * (a + b * c + ...)`): every product is a distinct
        # monomial with a nonzero coefficient, so no sums and no zeros to drop
        if len(p) == 1:
            (m1, c1), = p.items()
            return {(tuple(sorted(m1 + m2)) if m1 and m2 else m1 or m2): c1 * c2
                    for m2, c2 in q.items()}
        if len(q) == 1:
            (m2, c2), = q.items()
            return {(tuple(sorted(m1 + m2)) if m1 and m2 else m1 or m2): c1 * c2
                    for m1, c1 in p.items()}
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
    def _add_compare(self, lhs_expr, op, rhs_expr):
        """Flatten the comparison `lhs_expr op rhs_expr` (one linear propagator over atoms, a
        bound of one atom's domain, or a check on constants)."""
        left = self._poly(lhs_expr)
        right = self._poly(rhs_expr)
        for mono in right:
            if mono in left:
                break
        else:
            mono = None
        if mono is not None:
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
        # a coefficient +-1 (most constraints have one) makes the gcd 1 without computing it
        for g in terms.values():
            if g == 1 or g == -1:
                g = 1
                break
        else:
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

    def _constant_side(self, expr):
        """The value of `expr` when it is a constant or a fixed variable, else None."""
        kind = type(expr)
        if kind is Const:
            return expr.value
        if kind is Var and self.lo[expr.index] == self.hi[expr.index]:
            return self.lo[expr.index]
        return None

    def _bound(self, lhs, op, rhs):
        """`a * x + c op r` (op one of <= < >= >) with x an unfixed variable and r a constant: the
        bound of x's domain that _add_compare sets, without building the two sides'
        polynomials (a tiling model's caps: `loop <= 4`, `32 * warps <= max_threads`). False
        (nothing done) for any other shape."""
        r = self._constant_side(rhs)
        if r is None:
            return False
        kind = type(lhs)
        if kind is Var:
            a, i = 1, lhs.index
        elif kind is Sum and len(lhs.items) == 1 and type(lhs.items[0][1]) is Var:
            a, var = lhs.items[0]
            i = var.index
            r -= lhs.const
        else:
            return False
        lo, hi = self.lo[i], self.hi[i]
        if lo == hi:
            return False
        if op == ">=" or op == ">":
            a, r = -a, -r
        if op == "<" or op == ">":
            r -= 1
        g = abs(a)  # divided through by the coefficient: a becomes +-1, r rounds down
        if a > 0:
            self._restrict(i, lo, r // g)
        else:
            self._restrict(i, -(r // g), hi)
        return True

    def _product_equals_constant(self, lhs, rhs):
        """`a * b * ... == r` (a product of variables and constants with coefficient 1, two or
        more unfixed factors; r a constant): its product atom restricted to r, as _add_compare
        does, without the polynomials. False (nothing done) for any other shape."""
        r = self._constant_side(rhs)
        if r is None:
            return False
        parts = self._monomial(lhs.factors)
        if parts is None or parts[0] != 1 or len(parts[1]) < 2:
            return False
        atom = self._product_atom(tuple(parts[1]))
        self._restrict(atom, r, r)
        return True

    def _add_divides(self, constraint):
        """Flatten ci.divides(divisor, dividend): a Divides propagator over two atoms, unless
        the flattening settles it."""
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

    def _product_as_var(self, lhs, rhs):
        """`x == a * b * ...` (one monomial, coefficient 1): the product propagator writes x
        itself instead of an auxiliary atom tied to x by an equality, one hop less on every
        propagation path through it. On the 7 FlashRNN-class models (tile = count * size
        chains): propagator runs -18%, CPU time 0.87x to a first point and 0.81x to a proven
        optimum (median per-model paired ratios); plan models within noise.

        Returns (done, reads): done is True when the constraint is flattened; reads is (x, the
        unfixed variables of the product side) when the walk saw them (a product of variables
        and constants), else None."""
        lo = self.lo
        for side, other in ((lhs, rhs), (rhs, lhs)):
            if type(side) is not Var:
                continue
            x = side.index
            if lo[x] == self.hi[x] or x in self._product_outs:
                continue
            kind = type(other)
            if kind is CDiv:
                return self._cdiv_as_var(x, other), None
            # a product of variables and constants (the common case) straight to its monomial
            parts = self._monomial(other.factors) if kind is Product else None
            if parts is None:
                reads = None
                poly = self._poly(other)
                if len(poly) != 1:
                    return False, None
                (mono, coef), = poly.items()
            else:
                coef, atoms = parts
                reads = (x, atoms)
                if not coef:
                    return False, reads
                mono = tuple(atoms)
            if coef < 1 or len(mono) < 2 - (coef > 1) or x in mono:
                return False, reads
            if coef == 1:
                if mono in self._products:
                    return False, reads
                self._products[mono] = x
            else:
                # x == c * a * b: the constant is one more factor (a single-valued variable folds
                # into such a coefficient); one propagator, and the objective's direction reaches
                # a, b through it (Flat.value_preference)
                mono = mono + (self._const_atom(coef),)
            self._product_outs[x] = True
            self._factors_of[x] = mono
            self.props.append(self._product_prop(x, mono)[0])
            self.defs.append(("product", x, mono))
            return True, reads
        return False, None

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
        self._product_outs[x] = True
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
