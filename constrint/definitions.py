"""What a model's equalities fix and define, read off its expression trees under bounds lo/hi.

Used by the flattener (flatten.py) before it builds any propagator: the value of an expression
whose variables are all fixed (equality chains fold to constants), the unfixed variables an
expression reads, and the model variables some `x == expr` defines from the others (the search
does not branch on those first).
"""
from .expr import CDiv, Compare, Const, Product, Sum, Var


def _constant(expr, lo, hi):
    """The value of `expr` when every variable it reads is fixed in lo/hi, else None."""
    # dispatch on the exact node type, variables among the children inline: this runs on every
    # side of every equality at each pass of _fix_equality_chains
    kind = type(expr)
    if kind is Var:
        i = expr.index
        return lo[i] if lo[i] == hi[i] else None
    if kind is Const:
        return expr.value
    if kind is Product:
        out = 1
        for sub in expr.factors:
            if type(sub) is Var:
                i = sub.index
                if lo[i] != hi[i]:
                    return None
                value = lo[i]
            else:
                value = _constant(sub, lo, hi)
                if value is None:
                    return None
            out *= value
        return out
    if kind is Sum:
        out = expr.const
        for coef, sub in expr.items:
            if type(sub) is Var:
                i = sub.index
                if lo[i] != hi[i]:
                    return None
                value = lo[i]
            else:
                value = _constant(sub, lo, hi)
                if value is None:
                    return None
            out += coef * value
        return out
    if kind is CDiv:
        num, den = _constant(expr.num, lo, hi), _constant(expr.den, lo, hi)
        if num is None or den is None or den <= 0:
            return None
        return -(-num // den)
    return None


def _free_variables(expr, lo, hi, out):
    """Add to `out` the indices of the variables in `expr` that lo/hi leave unfixed."""
    kind = type(expr)
    if kind is Var:
        if lo[expr.index] != hi[expr.index]:
            out.add(expr.index)
        return
    if kind is Const:
        return
    # the children straight from the node's fields (children() builds a tuple), and leaves
    # here, not one call each (most children of a tiling model's products are)
    if kind is Sum:
        subs = [sub for _, sub in expr.items]
    elif kind is Product:
        subs = expr.factors
    else:
        subs = expr.children()
    for sub in subs:
        kind = type(sub)
        if kind is Var:
            if lo[sub.index] != hi[sub.index]:
                out.add(sub.index)
        elif kind is not Const:
            _free_variables(sub, lo, hi, out)


def _defined_variables(model, lo, hi):
    """Indices of model variables that some `x == expr` constraint defines from other variables.

    Taken greedily in constraint order, skipping any definition that would make a cycle, so the
    other (free) variables determine all of them: once the free ones are fixed, propagation fixes
    these too, and branching on them first would only multiply failing alternatives.
    """
    uses = {}  # defined variable -> indices of the unfixed variables its expression reads
    read = set()  # union of uses' values: a variable no definition reads closes no cycle
    for c in model.constraints:
        if type(c) is not Compare or c.op != "==":
            continue
        for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
            # a variable fixed by now (an equality chain's constant) is no decision at all
            if type(side) is not Var or side.index in uses or lo[side.index] == hi[side.index]:
                continue
            reads = set()
            _free_variables(other, lo, hi, reads)
            x = side.index
            # the walk is needed only when some definition reads x (a path from `reads` back
            # to x must end in one); in a tiling model few do, and the walks were half the time
            if x in reads or (x in read and _reaches(uses, reads, x)):
                continue
            uses[x] = reads
            read |= reads
            break
    return frozenset(uses)


def _reaches(uses, start, target):
    """Whether `target` is among `start` or the variables their definitions read, transitively."""
    stack, seen = list(start), set()
    while stack:
        i = stack.pop()
        if i == target:
            return True
        if i not in seen:
            seen.add(i)
            stack.extend(uses.get(i, ()))
    return False
