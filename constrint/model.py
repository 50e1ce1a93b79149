"""The public facade: Model (variables, constraints, objective, solve, best, solutions) and Solution.

solve() answers one optimal point; best(k) the k best points by the objective, best first (what
an autotuner times as candidates); solutions() every feasible point, objective ignored."""
import gc
import heapq
import math
import time
from contextlib import contextmanager

from .expr import CDiv, Compare, Const, Divides, Product, Sum, Var, as_expr, as_int, walk
from .components import Part, split
from .flatten import Flat
from .search import Search, TimeUp

STATUSES = ("optimal", "feasible", "infeasible", "unknown")


class Solution:
    """Result of Model.solve().

    status: "optimal" (proven best, or any solution without an objective), "feasible" (the time
    limit stopped the search with an incumbent), "infeasible" (proven: no solution), or "unknown"
    (the time limit passed before any solution was found).
    objective: the objective's value (None without an objective or without a solution).
    stats: {"nodes": search nodes, "runs": propagator runs, "seconds": wall time of solve()}.
    sol[x] / sol["x"]: the value of a variable (LookupError without a solution).
    """
    __slots__ = ("status", "objective", "_values", "stats")

    def __init__(self, status, values=None, objective=None, stats=None):
        self.status = status
        self._values = values
        self.objective = objective
        self.stats = stats or {}

    def __getitem__(self, var):
        if self._values is None:
            raise LookupError(f"no solution (status {self.status!r}): no value for {var}")
        name = var.name if isinstance(var, Var) else var
        if not isinstance(name, str):
            raise TypeError(f"index a Solution with a variable or its name, got {type(var).__name__}")
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no variable named {name!r} in this model") from None

    @property
    def values(self):
        """{name: int} of every model variable (LookupError without a solution)."""
        if self._values is None:
            raise LookupError(f"no solution (status {self.status!r})")
        return dict(self._values)

    def __bool__(self):
        return self._values is not None

    def __repr__(self):
        return f"Solution(status={self.status!r}, objective={self.objective!r}, values={self._values!r})"


class Model:
    """Integer variables, constraints over them and an optional objective."""

    def __init__(self):
        self.variables = []
        self.constraints = []
        self.objective = None  # None or (expression, "min" | "max")
        self._names = {}

    def int_var(self, name, lo=None, hi=None, *, values=None):
        """A variable with the inclusive range [lo, hi] or the explicit domain `values`."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"variable name must be a non-empty str, got {name!r}")
        if name in self._names:
            raise ValueError(f"a variable named {name!r} already exists in this model")
        if values is not None:
            if lo is not None or hi is not None:
                raise ValueError(f"variable {name!r}: give either lo and hi or values, not both")
            try:
                items = list(values)
            except TypeError:
                raise TypeError(f"variable {name!r}: values must be an iterable of ints, "
                                f"got {type(values).__name__}") from None
            dom = tuple(sorted({as_int(v, f"variable {name!r} value") for v in items}))
            if not dom:
                raise ValueError(f"variable {name!r}: empty domain (values is empty)")
            lo_v, hi_v = dom[0], dom[-1]
            if len(dom) == hi_v - lo_v + 1:
                dom = None  # a contiguous set is a range
        else:
            if lo is None or hi is None:
                raise TypeError(f"variable {name!r}: give both bounds lo and hi (inclusive) or values=[...]")
            lo_v = as_int(lo, f"variable {name!r} lower bound lo")
            hi_v = as_int(hi, f"variable {name!r} upper bound hi")
            if lo_v > hi_v:
                raise ValueError(f"variable {name!r}: empty domain, lo={lo_v} > hi={hi_v}")
            dom = None
        var = Var(self, name, len(self.variables), lo_v, hi_v, dom)
        self.variables.append(var)
        self._names[name] = var
        return var

    def add(self, constraint):
        """Add a comparison (`a <= b`, `a == b`, `a != b`, ...) or a ci.divides(a, b) constraint."""
        if isinstance(constraint, bool):
            raise TypeError("Model.add got a plain bool: a comparison between ints (no variable) "
                            "was already evaluated by Python; compare constrint expressions")
        if not isinstance(constraint, (Compare, Divides)):
            raise TypeError("Model.add takes a comparison of constrint expressions or "
                            f"ci.divides(...), got {type(constraint).__name__}")
        for expr in constraint.expressions():
            self._check_expression(expr, "constraint")
        if isinstance(constraint, Divides):
            self._check_divisor(constraint.divisor, "divides")
        self.constraints.append(constraint)
        return constraint

    def minimize(self, expr):
        """Minimise `expr` (replaces any previous objective)."""
        self._set_objective(expr, "min")

    def maximize(self, expr):
        """Maximise `expr` (replaces any previous objective)."""
        self._set_objective(expr, "max")

    def _set_objective(self, expr, sense):
        expr = as_expr(expr, "objective")
        self._check_expression(expr, "objective")
        self.objective = (expr, sense)

    def _check_expression(self, expr, where):
        for node in walk(expr):
            if isinstance(node, Var) and node.model is not self:
                raise ValueError(f"{where} uses variable {node.name!r} of another Model")
            if isinstance(node, CDiv):
                self._check_divisor(node.den, "cdiv")

    def _check_divisor(self, expr, what):
        low = _lower_bound(expr)
        if low <= 0:
            raise ValueError(f"{what} divisor {expr} must be positive, but its variables' domains "
                             f"admit {low}; restrict them to positive values")

    def solve(self, time_limit=None):
        """Solve to optimality (or to the first solution without an objective).

        time_limit: seconds (> 0) or None for no limit; on expiry the best solution so far is
        returned with status "feasible" ("unknown" when there is none yet). The clock is read at
        every search node and every few hundred propagator runs, the root's propagation included.
        """
        deadline = _deadline(time_limit) if time_limit is not None else None
        # the cyclic collector paused for the solve (_cyclic_gc_paused says why), written out
        # here: the context manager's calls were ~2% of a cold first point (contextlib's code
        # is out of the caches after another library's solve)
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._solve(deadline)
        finally:
            if enabled:
                gc.enable()

    def _solve(self, deadline):
        start = time.perf_counter()
        flat = Flat(self)
        search = Search(flat, deadline, first_point=True)
        searches = [search]
        found = {}  # "values", "objective" of the best point so far
        timed_out = False
        try:
            if search.root():
                # without an objective one dive finds a point: splitting would only add work
                parts = split(flat, search.st.lo, search.st.hi) if flat.objective else None
                if parts is None:
                    _branch_and_bound(flat, search, found)
                else:
                    _solve_parts(flat, search, parts, deadline, searches, found)
        except TimeUp:
            timed_out = True
        nodes = runs = 0
        for s in searches:
            nodes += s.nodes
            runs += s.runs
        stats = {"nodes": nodes, "runs": runs, "seconds": time.perf_counter() - start}
        if not found:
            return Solution("unknown" if timed_out else "infeasible", stats=stats)
        values = dict(zip(self._names, found["values"]))  # _names: {name: var}, in index order
        return Solution("feasible" if timed_out else "optimal", values, found["objective"], stats)

    def best(self, k, time_limit=None):
        """The k best feasible points by the objective, best first, as a list of Solutions.

        k: how many (an int >= 0); fewer come back when the model has fewer feasible points, none
        when it is infeasible. Every point left out is no better than the last one returned; among
        points with equal objective, which are returned (and their order) is unspecified.
        Each Solution has the point's values and objective, and status "optimal" when the search
        finished (the list is proven to be k best) or "feasible" when `time_limit` (seconds, as
        for solve()) stopped it first: then they are the best points found so far.
        Without an objective: any k feasible points (objective None), as solutions(limit=k).
        Branch and bound as in solve(), with the bound kept at the k-th best point found so far.
        """
        k = as_int(k, "best k")
        if k < 0:
            raise ValueError(f"best k must be >= 0, got {k}")
        deadline = _deadline(time_limit)
        if k == 0:
            return []
        with _cyclic_gc_paused():
            return self._best(k, deadline)

    def _best(self, k, deadline):
        start = time.perf_counter()
        flat = Flat(self)
        search = Search(flat, deadline)
        names = [v.name for v in self.variables]
        kept = []  # heap of (-atom value, -order, values, objective): the worst kept point on top
        timed_out = False
        try:
            for order, _ in enumerate(search.dfs()):
                values = dict(zip(names, search.values()))
                if flat.objective is None:
                    kept.append((0, -order, values, flat.objective_const))
                    if len(kept) == k:
                        break
                    continue
                atom = search.st.lo[flat.objective[0]]
                item = (-atom, -order, values, search.objective_value())
                if len(kept) < k:
                    heapq.heappush(kept, item)
                else:
                    heapq.heappushpop(kept, item)
                if len(kept) == k:
                    # only strictly better points can still enter (ties with the k-th: not needed)
                    search.cutoff = -kept[0][0] - 1
        except TimeUp:
            timed_out = True
        stats = {"nodes": search.nodes, "runs": search.runs, "seconds": time.perf_counter() - start}
        status = "feasible" if timed_out else "optimal"
        ranked = sorted(kept, key=lambda item: (-item[0], -item[1]))
        return [Solution(status, values, objective, dict(stats)) for _, _, values, objective in ranked]

    def solutions(self, limit=None):
        """Iterator over every feasible point once, as {name: int}; the objective is ignored.

        limit: at most this many points (None = all).
        """
        if limit is not None:
            limit = as_int(limit, "solutions limit")
            if limit < 0:
                raise ValueError(f"solutions limit must be >= 0 or None, got {limit}")
        return self._iter_solutions(limit)

    def _iter_solutions(self, limit):
        if limit == 0:
            return
        objective, self.objective = self.objective, None
        try:
            flat = Flat(self)
        finally:
            self.objective = objective
        search = Search(flat)
        names = [v.name for v in self.variables]
        count = 0
        for _ in search.dfs():
            yield dict(zip(names, search.values()))
            count += 1
            if limit is not None and count >= limit:
                return

    def __str__(self):
        lines = []
        for v in self.variables:
            dom = f"{{{', '.join(map(str, v.values))}}}" if v.values is not None else f"[{v.lo}, {v.hi}]"
            lines.append(f"{v.name} in {dom}")
        lines.extend(str(c) for c in self.constraints)
        if self.objective is not None:
            lines.append(f"{'minimize' if self.objective[1] == 'min' else 'maximize'} {self.objective[0]}")
        return "\n".join(lines)


def _branch_and_bound(flat, search, found):
    """Depth-first branch and bound from the search's root: every better point goes in `found`
    (the first one ends it without an objective)."""
    points = search.dfs()
    if next(points, _END) is _END:
        return
    if flat.objective is None:
        found["values"] = search.values()
        found["objective"] = flat.objective_const
        return

    def take():
        found["values"] = search.values()
        found["objective"] = search.objective_value()

    take()
    _minimize(search, flat.objective[0], points, take)


def _minimize(search, atom, points, take):
    """Branch and bound on `atom` from the point the dfs generator `points` stands at: each next
    point must be better than the incumbent; take() records it (the store holds it).
    Bound jumps (each next point sought halfway down to the proven lower bound, restarting from
    the root when none is there) were tried on the FlashRNN-class parts and cost 1.1-3x the
    propagator runs: the dives repeated after each restart outweigh the incumbents saved."""
    st = search.st
    search.cutoff = st.lo[atom] - 1
    for _ in points:
        take()
        search.cutoff = st.lo[atom] - 1


def _solve_parts(flat, root, split_parts, deadline, searches, found):
    """Search each independent part (components.split) on its own, from the root's domains:
    first one point of every part (so that a time limit after that still has a whole point),
    then branch and bound within each part that owns objective terms. `found` holds the whole
    point made of every part's best one; the searches go in `searches` (for the statistics)."""
    parts, fixed = split_parts
    st = root.st
    values = st.lo[:flat.n_model]
    runs = []  # (part, search, its dfs generator, objective terms)
    for props, model_vars, terms in parts:
        part = Part(flat, st.lo, st.hi, st.vals, props, model_vars, terms)
        search = Search(part, deadline, first_point=True)
        searches.append(search)
        runs.append((part, search, search.dfs(), terms))
    totals = []
    for part, search, points, terms in runs:
        if next(points, _END) is _END:
            return  # this part has no point: neither has the model
        totals.append(_take(search, part, values, terms))
    found["values"] = list(values)
    found["objective"] = _objective(flat, fixed + sum(totals))
    for k, (part, search, points, terms) in enumerate(runs):
        if part.objective is None:
            continue

        def take(k=k, search=search, part=part, terms=terms):
            totals[k] = _take(search, part, values, terms)
            found["values"] = list(values)
            found["objective"] = _objective(flat, fixed + sum(totals))

        _minimize(search, part.objective[0], points, take)


_END = object()  # what next() gives back once a dfs generator has no more points


def _take(search, part, values, terms):
    """Copy a part's point into `values`; the value of the objective terms it owns."""
    lo = search.st.lo
    for i in part.branch:
        values[i] = lo[i]
    return sum(a * lo[i] for i, a in terms)


def _objective(flat, atom_value):
    """The model's objective when its objective atom is `atom_value` (None without one)."""
    if flat.objective is None:
        return flat.objective_const
    _, offset, sign = flat.objective
    return sign * (atom_value + offset)


@contextmanager
def _cyclic_gc_paused():
    """Pause Python's cyclic garbage collector for one solve. A search allocates a tuple per
    domain change (the trail), so the collector ran every ~700 of them, and each full pass walks
    every object of the process (a model's nodes, torch's modules, ...): 15% of a first point on
    the FlashRNN-class models, more in a process with torch loaded. The solver makes no
    reference cycles it needs collected (reference counting frees its garbage); the collector
    runs again afterwards, as it was (left off if the caller had turned it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _deadline(time_limit):
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)):
        raise TypeError(f"time_limit must be a number of seconds or None, got {type(time_limit).__name__}")
    if not time_limit > 0 or math.isnan(time_limit):
        raise ValueError(f"time_limit must be > 0 seconds (or None for no limit), got {time_limit}")
    return time.perf_counter() + time_limit


def _lower_bound(expr):
    """A lower bound of `expr` over its variables' declared domains (interval arithmetic)."""
    return _interval(expr)[0]


def _interval(expr):
    """(lo, hi) of `expr` over its variables' declared domains (interval arithmetic)."""
    if isinstance(expr, Const):
        return expr.value, expr.value
    if isinstance(expr, Var):
        return expr.lo, expr.hi
    if isinstance(expr, Sum):
        lo = hi = expr.const
        for coef, sub in expr.items:
            a, b = _interval(sub)
            lo += min(coef * a, coef * b)
            hi += max(coef * a, coef * b)
        return lo, hi
    if isinstance(expr, Product):
        lo = hi = 1
        for sub in expr.factors:
            a, b = _interval(sub)
            c = (lo * a, lo * b, hi * a, hi * b)
            lo, hi = min(c), max(c)
        return lo, hi
    if isinstance(expr, CDiv):
        n_lo, n_hi = _interval(expr.num)
        d_lo, d_hi = _interval(expr.den)
        d_lo = max(d_lo, 1)
        d_hi = max(d_hi, 1)
        return (-(-n_lo // (d_hi if n_lo >= 0 else d_lo)), -(-n_hi // (d_lo if n_hi >= 0 else d_hi)))
    raise TypeError(f"not a constrint expression: {expr!r}")
