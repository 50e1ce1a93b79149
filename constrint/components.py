"""Independent parts of a model after root propagation, each searched on its own.

Once the root's propagation has fixed what it can (problem sizes, limits: a tiling model states
them as variables fixed by equalities), the propagators often fall into groups that share no
unfixed variable: the forward and the backward pass of a kernel, say, tied only by the problem
sizes. One search over all of them multiplies their trees (every failure in one part backtracks
through the choices of the other), and branch and bound proves a sum's optimum only after
walking the cross product of both parts' near-optimal points. Searched one after the other, the
work adds up instead: with a separable objective (a sum of terms, each read by one part), each
part minimises its own terms; a part the objective does not read needs one feasible point.
"""
from . import propagators as P
from .definitions import value_preference
from .flatten import linear_eq


def split(flat, lo, hi):
    """The independent parts of `flat` at the domains lo/hi (a fixed point of its propagators).

    Returns (parts, fixed) or None when the model does not split (one part only) or its objective
    is not a sum the parts can share out. parts: a list of (props, model_vars, terms):
    propagator indices, the unfixed model variables they read (a variable no propagator reads is
    a part of its own), and the objective terms [(atom, coef)] the part owns (empty: the part
    needs any feasible point). fixed: the objective atom's value from its fixed terms, so that
    it equals fixed + the sum of every part's terms."""
    n = len(lo)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    objective = flat.objective
    obj_atom = None
    if objective is not None and lo[objective[0]] != hi[objective[0]]:
        obj_atom = objective[0]
    obj_def = terms = None
    fixed = lo[objective[0]] if objective is not None and obj_atom is None else 0
    if obj_atom is not None:
        obj_def, terms, fixed = flat.linear_defs.get(obj_atom, (None, ((obj_atom, 1),), 0))
    live = []  # propagators reading an unfixed atom (the others hold at the root's fixed point)
    for k, prop in enumerate(flat.props):
        free = [i for i in prop.watch if lo[i] != hi[i]]
        if not free:
            continue
        if k == obj_def:
            continue  # the objective's own definition would join every part it sums over
        live.append((k, free))
        root = find(free[0])
        for i in free[1:]:
            r = find(i)
            if r != root:
                parent[r] = root
    model_vars = [i for i in range(flat.n_model) if lo[i] != hi[i]]
    parts = {}  # root atom -> [props, model vars, objective terms]
    for k, free in live:
        parts.setdefault(find(free[0]), [[], [], []])[0].append(k)
    for i in model_vars:
        parts.setdefault(find(i), [[], [], []])[1].append(i)
    if obj_atom is not None:
        if obj_def is not None and any(i == obj_atom for _, free in live for i in free):
            return None  # the objective atom is read elsewhere too: not a plain sum
        for i, a in terms:
            if lo[i] != hi[i]:
                parts.setdefault(find(i), [[], [], []])[2].append((i, a))
            else:
                fixed += a * lo[i]
    if len(parts) < 2:
        return None
    return [tuple(p) for p in parts.values()], fixed


class Part:
    """One part of a Flat, in the form Search reads (lo, hi, vals, props, n_model, defined,
    objective, infeasible, value_preference), over the same atoms; `branch` names the model
    variables the search fixes. An objective of several terms gets one new atom, their sum
    (defined by one more propagator), which the part's search minimises."""

    def __init__(self, flat, lo, hi, vals, props, model_vars, terms):
        self.n_model = flat.n_model
        self.lo, self.hi, self.vals = list(lo), list(hi), list(vals)
        self.props = []
        for k in props:
            prop = _simplified(flat.props[k], lo, hi)
            if prop is not None:
                self.props.append(prop)
        self.defined = flat.defined
        self.branch = tuple(model_vars)
        self.defs = flat.defs
        self.infeasible = False
        self.objective = None
        self.objective_const = 0
        if len(terms) == 1 and terms[0][1] == 1:
            self.objective = (terms[0][0], 0, 1)
        elif terms:
            least = most = 0
            for i, a in terms:
                least += a * (lo[i] if a > 0 else hi[i])
                most += a * (hi[i] if a > 0 else lo[i])
            atom = len(self.lo)
            self.lo.append(least)
            self.hi.append(most)
            self.vals.append(None)
            idx = [i for i, _ in terms] + [atom]
            coefs = [a for _, a in terms] + [-1]
            self.props.append(linear_eq(idx, coefs, 0))
            self.defs = flat.defs + [("linear", atom, tuple(terms))]
            self.objective = (atom, 0, 1)

    def value_preference(self, lo=None):
        return value_preference(self.defs, self.objective, self.lo if lo is None else lo)


def _simplified(prop, lo, hi):
    """`prop` with the atoms the root fixed folded in (into a linear right-hand side, a product's
    constant factor), or None when it can narrow nothing any more: a linear constraint, product
    or ceiling division left with one unfixed atom bounds it to an interval, which the root's
    fixed point already applied. (Divides and != can still act then: holes, multiples.)
    On the FlashRNN-class parts this drops about a third of the propagators and shortens most
    products."""
    kind = type(prop)
    if kind is P.LinearLe or kind is P.LinearEq or kind is P.LinearEq2:
        terms = ((prop.x, prop.a), (prop.y, prop.b)) if kind is P.LinearEq2 else prop.terms
        rest = [(i, a) for i, a in terms if lo[i] != hi[i]]
        if len(rest) <= 1:
            return None
        if len(rest) == len(terms):
            return prop
        rhs = prop.rhs - sum(a * lo[i] for i, a in terms if lo[i] == hi[i])
        idx, coefs = [i for i, _ in rest], [a for _, a in rest]
        return P.LinearLe(idx, coefs, rhs) if kind is P.LinearLe else linear_eq(idx, coefs, rhs)
    if kind is P.ProductNonneg or kind is P.ProductNonneg2 or kind is P.ProductNonneg3:
        if kind is P.ProductNonneg:
            out, c, factors = prop.out, prop.coef, prop.factors
        elif kind is P.ProductNonneg2:
            out, c, factors = prop.out, prop.coef, (prop.x, prop.y)
        else:
            out, c, factors = prop.out, prop.coef, (prop.x, prop.y, prop.z)
        rest = []
        for i in factors:
            if lo[i] == hi[i]:
                c *= lo[i]
            else:
                rest.append(i)
        if not rest or c == 0 or (len(rest) == 1 and lo[out] == hi[out]):
            return None
        if len(rest) == 1:
            return P.LinearEq2([out, rest[0]], [1, -c], 0)
        if len(rest) == len(factors):
            return prop
        if len(rest) == 2:
            return P.ProductNonneg2(out, rest[0], rest[1], c)
        if len(rest) == 3:
            return P.ProductNonneg3(out, rest[0], rest[1], rest[2], c)
        return P.ProductNonneg(out, rest, c)
    if kind is P.CeilDiv and sum(lo[i] != hi[i] for i in prop.watch) <= 1:
        return None
    return prop
