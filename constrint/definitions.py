"""What a model's equalities fix and define, read off its expression trees under bounds lo/hi.

Used by the flattener (flatten.py): the variables that equality chains fix before it builds any
propagator (they fold to constants), the model variables some `x == expr` defines from the
others (the search does not branch on those first), and the value order the definitions suggest
under an objective (value_preference).
"""
from .expr import CDiv, Compare, Const, Product, Sum, Var


def _constant(expr, lo, hi):
    """The value of `expr` when every variable it reads is fixed in lo/hi, else None."""
    # dispatch on the exact node type, variables among the children inline: this runs on every
    # side of every equality at each round of fix_equality_chains
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
    """Add to the dict `out` (as keys) the indices of the variables in `expr` that lo/hi leave
    unfixed."""
    kind = type(expr)
    if kind is Var:
        if lo[expr.index] != hi[expr.index]:
            out[expr.index] = True
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
                out[sub.index] = True
        elif kind is not Const:
            _free_variables(sub, lo, hi, out)


def defined_variables(candidates, lo, hi):
    """The model variables (indices, as the keys of a dict) that some `x == expr` constraint
    defines from other variables.

    candidates: (constraint, reads) for every equality with a variable side, in constraint
    order; reads is (x, the variables the other side reads) where the flattener's walk already
    saw them (x == a product of variables and constants), else None (the trees are read here).
    Taken greedily in constraint order, skipping any definition that would make a cycle, so the
    other (free) variables determine all of them: once the free ones are fixed, propagation fixes
    these too, and branching on them first would only multiply failing alternatives. lo/hi: the
    bounds once every constraint is flattened (a variable fixed by then is no decision at all).
    """
    uses = {}  # defined variable -> indices of the unfixed variables its expression reads
    read = {}  # union of uses' values: a variable no definition reads closes no cycle
    # (dicts and lists here rather than sets: one kind of container less for a solve's first,
    # cache-cold pass, where each kind of operation first costs its share of cache misses)
    for c, seen in candidates:
        if seen is not None:
            # the other side is a product, not a variable: x is the only candidate
            x, atoms = seen
            if x in uses or lo[x] == hi[x]:
                continue
            reads = [i for i in atoms if lo[i] != hi[i]]
            if x in reads or (x in read and _reaches(uses, reads, x)):
                continue
            uses[x] = reads
            for i in reads:
                read[i] = True
            continue
        for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
            if type(side) is not Var or side.index in uses or lo[side.index] == hi[side.index]:
                continue
            found = {}
            _free_variables(other, lo, hi, found)
            reads = list(found)
            x = side.index
            # the walk is needed only when some definition reads x (a path from `reads` back
            # to x must end in one); in a tiling model few do, and the walks were half the time
            if x in found or (x in read and _reaches(uses, reads, x)):
                continue
            uses[x] = reads
            for i in reads:
                read[i] = True
            break
    return uses


def _reaches(uses, start, target):
    """Whether `target` is among `start` or the variables their definitions read, transitively."""
    stack, seen = list(start), {}
    while stack:
        i = stack.pop()
        if i == target:
            return True
        if i not in seen:
            seen[i] = True
            stack.extend(uses.get(i, ()))
    return False


def fix_equality_chains(constraints, lo, hi, vals):
    """Fix every variable that an `x == expr` constraint sets to a constant, transitively
    (`batch == 16`, then `rows == gates * head_dim` once both are known), before anything
    is flattened: the constants then fold into every expression that reads them (fewer
    products, shorter sums) and those constraints become checks on constants. A value
    outside x's domain makes the model infeasible. lo, hi, vals: the model variables'
    domains, narrowed in place. Returns (the constraints that fixed a variable, as dict keys
    (they hold by construction: nothing is left to flatten of them), infeasible).

    The equalities are visited in order, round after round, until a round fixes nothing; a
    round after the first stops early, where the equalities visited after the previous
    round's last fix begin, when it has fixed nothing by then (those saw every fix: visiting
    them again would find nothing new)."""
    used = {}  # the constraints that fixed a variable (identity-hashed)
    pending = [c for c in constraints if type(c) is Compare and c.op == "=="
               and (type(c.lhs) is Var or type(c.rhs) is Var)]
    stop = len(pending)  # the round ends here: later equalities saw every fix
    while pending:
        left = []
        last_fix = -1  # where in `left` the equalities visited after the latest fix begin
        k = -1
        for c in pending:
            k += 1
            if k == stop and last_fix < 0:
                break  # the rest saw every fix (and keeps its place in the list)
            for side, other in ((c.lhs, c.rhs), (c.rhs, c.lhs)):
                if type(side) is Var and lo[side.index] != hi[side.index]:
                    value = _constant(other, lo, hi)
                    if value is not None:
                        break
            else:
                # still open while a side is an unfixed variable
                x, y = c.lhs, c.rhs
                if ((type(x) is Var and lo[x.index] != hi[x.index])
                        or (type(y) is Var and lo[y.index] != hi[y.index])):
                    left.append(c)
                continue
            i = side.index
            domain = vals[i]
            if not lo[i] <= value <= hi[i] or (domain is not None and value not in domain):
                return used, True
            lo[i] = hi[i] = value
            vals[i] = None
            used[c] = True
            last_fix = len(left)
        else:
            if last_fix < 0:
                break  # a whole round without a fix
            pending, stop = left, last_fix
            continue
        break
    return used, False


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
