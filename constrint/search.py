"""Propagation to a fixed point plus depth-first branch and bound over the model variables.

Only model variables are branched on: every auxiliary variable is a function of them, and the
propagators fix it (and check its constraints) once its operands are fixed.
"""
import time

from .domain import DomainStore

# Ranges up to this size are branched value by value; larger ones are bisected.
_ENUMERATE_RANGE = 8
# How many nodes between two looks at the clock: every node, as a node costs ~0.1-5 ms of
# propagation and perf_counter() well under a microsecond.
_CLOCK_EVERY = 1
# How many propagator runs between two checks inside one propagation (a run costs ~1-20 us): a
# fixed point can take millions of runs when bounds creep across a wide range (x - y >= 1 with
# y - x >= 0 over 0..10^12 moves both by one a pass), at the root as at any node. A check looks
# at the clock (with a deadline) and compacts the trail (DomainStore.compact).
_CHECK_RUNS = 512
# Levels of the tree (from the root) whose children are ordered by probing: each child is
# propagated once and the children are tried in order of their objective lower bound. Measured
# on 62 fused_rnn + 18 linear_scan plan models (propagator runs in total): no probing 336k,
# top level 237k, top two 254k, every level 283k. Since the value order follows the objective
# and solve() searches independent parts apart, every level wins: the 657 plan models of
# `python -m bench constrint` 584k -> 495k runs (CPU 0.93x), the 7 FlashRNN-class models to a
# proven optimum 30.3k -> 23.0k runs (CPU 0.91x, median per-model paired ratio; same optima).
PROBE_LEVELS = 1 << 30


class TimeUp(Exception):
    """The time limit passed during the search."""


class Search:
    """One search over a Flat model. `solutions()` enumerates, `minimize()` runs branch and bound."""

    def __init__(self, flat, deadline=None, first_point=False):
        self.flat = flat
        # only one point wanted, no objective: wide ranges split at an end (_alternatives)
        self.split_ends = first_point and flat.objective is None
        self.props = flat.props
        # wake[e]: the propagators to wake on bound event e (DomainStore), as a bit set (bit k:
        # propagator k); the queue is one int of the same bits. Most propagators wake on both
        # events of a variable; those with `events` only on the bounds they read. Popping the
        # lowest bit runs definitions before their readers (flattening appends them first):
        # 10% fewer runs than first in first out on the FlashRNN-class first points. A pop
        # grows with the model: ~0.07 us at 63 propagators, ~0.09 us at 630, ~0.8 us at 6,300
        # (measured), so a model of thousands of propagators pays more per run than with a deque
        n = len(flat.lo)
        by_var = [0] * n  # propagators waking on both events of each variable
        read_by = [0] * n  # propagators with `events` reading each variable
        wake = [0] * (2 * n)
        funcs = [prop.propagate for prop in self.props]
        # an idempotent propagator leaves itself at its own fixed point, so its own changes
        # must not wake it again: its bit is masked out of what its run wakes
        keep_mask = []
        bit = 1
        for prop in self.props:
            events = prop.events
            if events is None:
                for i in prop.watch:
                    by_var[i] |= bit
            else:
                for e in events:
                    wake[e] |= bit
                for i in prop.watch:
                    read_by[i] |= bit
            keep_mask.append(~bit if prop.idempotent else -1)
            bit <<= 1
        # both events of each variable from by_var, and how many propagators read each variable
        # (branching order), in one loop
        for i in range(n):
            b = by_var[i]
            if b:
                wake[2 * i] |= b
                wake[2 * i + 1] |= b
                read_by[i] |= b
        self.degree = [b.bit_count() for b in read_by]
        self.st = DomainStore(flat.lo, flat.hi, flat.vals, wake)
        self.funcs = funcs
        self.keep_mask = keep_mask
        self.pending = 0  # bit set of the propagators queued to run
        # the model variables to fix: all of them, or those of one part (components.Part)
        branch = getattr(flat, "branch", range(flat.n_model))
        defined = flat.defined
        self.decision_groups = ([i for i in branch if i not in defined],
                                [i for i in branch if i in defined])
        self.prefer = [0] * len(flat.lo)  # value order: set from the root's domains (dfs)
        self.objective_atom = flat.objective[0] if flat.objective else None
        self.cutoff = None  # objective atom must stay <= cutoff (set by branch and bound)
        # (variable, alternative) -> domains its probe propagated to (DomainStore.domains_since);
        # each is used once, when the search enters that branch
        self.probed = {}
        self.deadline = deadline
        self.nodes = 0
        self.runs = 0  # propagator runs, for measuring the search's work independent of load
        self.check_at = _CHECK_RUNS  # propagate() calls _check() once `runs` reaches this
        self.rooted = False  # root() reached its fixed point (dfs() then starts from it)
        self.stack = []  # dfs frames [mark, variable, alternatives, next position]

    # ---- propagation ----------------------------------------------------------------------
    def propagate(self):
        """Run the queued propagators to a fixed point, lowest index first; False if a domain
        became empty. Raises TimeUp past the deadline (the queue is then left as it was: the
        search is over)."""
        st = self.st
        pending = self.pending | st.woken
        st.woken = 0
        runs = self.runs
        check_at = self.check_at
        funcs, keep_mask = self.funcs, self.keep_mask
        while pending:
            if runs >= check_at:
                self.runs = runs
                self.pending = pending
                self._check()
                check_at = self.check_at
            low = pending & -pending
            pending ^= low
            k = low.bit_length() - 1
            runs += 1
            result = funcs[k](st)
            if not result:
                self.pending = st.woken = 0
                self.runs = runs
                return False
            woken = st.woken
            if woken:
                pending |= woken & keep_mask[k]
                st.woken = 0
            if result is not True:  # AGAIN: it stopped short of its own fixed point
                pending |= low
        self.pending = 0
        self.runs = runs
        return True

    def _check(self):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise TimeUp
        self.st.compact()
        self.check_at = self.runs + _CHECK_RUNS

    def root(self):
        """Propagate every constraint once from the initial domains."""
        if self.flat.infeasible:
            return False
        self.pending = (1 << len(self.props)) - 1
        self.rooted = self.propagate()
        return self.rooted

    # ---- branching ------------------------------------------------------------------------
    def _choose(self):
        """The model variable to branch on next, or None when all are fixed.

        Free variables go before those an equality defines (Flat.defined). Within each group,
        among variables with an enumerable domain (a value set, or a range of at most
        _ENUMERATE_RANGE values) the one in the MOST constraints (propagators watching it) goes
        first, and among those the one with the most values; wide ranges, bisected, come after
        them, smallest first (they are often fixed by propagation by then).
        Measured on the 62 fused_rnn plan models: largest-enumerable-first needs 111k propagator
        runs and 631 nodes in total, smallest-domain-first 232k runs and 1090 nodes. Putting the
        most-constrained variable first (a tiling size read by both a grid count and a per-block
        cost, say) lets the objective's interval bound prune earlier: on 32 fused_rnn + 18
        linear_scan plan models and 5 FlashRNN-sized ones, 126k -> 82k runs (scan 70k -> 34k).
        """
        st = self.st
        lo, hi, vals = st.lo, st.hi, st.vals
        degree = self.degree
        # each group is sorted by degree, most first (dfs): once an enumerable variable is
        # found, the scan stops at the first variable of a lower degree (the choice was ~8% of a
        # FlashRNN-class first point when every node scanned every variable); ties as in index
        # order
        for group in self.decision_groups:
            best, best_degree, best_size = None, -1, 0
            wide, wide_size = None, None
            for i in group:
                a, b = lo[i], hi[i]
                if a == b:
                    continue
                d = degree[i]
                if d < best_degree:
                    break
                vs = vals[i]
                if vs is not None:
                    size = len(vs)
                elif b - a < _ENUMERATE_RANGE:
                    size = b - a + 1
                else:
                    if wide is None or b - a < wide_size or (b - a == wide_size and i < wide):
                        wide, wide_size = i, b - a
                    continue
                if d > best_degree or size > best_size:
                    best, best_degree, best_size = i, d, size
            if best is not None:
                return best
            if wide is not None:
                return wide
        return None

    def _alternatives(self, i):
        """Disjoint branches covering variable i's domain: ('=', v), ('<=', v) or ('>=', v).

        A wide range is halved (under an objective the bound prunes whole halves; an enumeration
        keeps its depth logarithmic), except when one point without objective is asked for
        (split_ends) and the search is not inside the "rest" branch of such a split of i: then
        it splits into its preferred end value and the rest, which is halved from then on (so a
        long walk value by value cannot happen). On the 7 FlashRNN-class models without
        objective: 148 -> 93 nodes, CPU time per first point 0.89x (median over the models of
        the median per-pair ratio of 30 alternating old/new solves) when only the root's end
        was split off; splitting off the current end (propagation often raised the root's
        lower bound, 1 -> 2 say, and halving [2, 32] took three nodes to reach 2): 111 -> 105
        nodes, 2514 -> 2406 runs, CPU time 0.98x (median per-model paired ratio)."""
        st = self.st
        high_first = self.prefer[i] < 0
        vs = st.vals[i]
        if vs is None and st.hi[i] - st.lo[i] < _ENUMERATE_RANGE:
            vs = range(st.lo[i], st.hi[i] + 1)
        if vs is not None:
            return [(0, v) for v in (reversed(vs) if high_first else vs)]
        if self.split_ends:
            # tile counts of a tiling model are mostly 1 at a first point: fixing the end value
            # takes one node where halving a range of 2**30 takes many
            # a frame of i past its first alternative: inside the rest of an end split of i
            for frame in self.stack:
                if frame[1] == i and frame[3] > 1:
                    break
            else:
                if high_first:
                    return [(0, st.hi[i]), (1, st.hi[i] - 1)]
                return [(0, st.lo[i]), (2, st.lo[i] + 1)]
        mid = (st.lo[i] + st.hi[i]) // 2
        low, high = (1, mid), (2, mid + 1)
        return [high, low] if high_first else [low, high]

    def _apply(self, i, alt):
        st = self.st
        if self.probed:
            domains = self.probed.pop((i, alt), None)
            if domains is not None:
                # the fixed point this branch reached when probed: set it again instead of
                # propagating again; a cutoff tightened since then still propagates below
                st.replay(domains)
                if self.cutoff is not None and st.hi[self.objective_atom] > self.cutoff:
                    return st.set_hi(self.objective_atom, self.cutoff) and self.propagate()
                return True
        kind, v = alt
        if kind == 0:
            ok = st.fix(i, v)
        elif kind == 1:
            ok = st.set_hi(i, v)
        else:
            ok = st.set_lo(i, v)
        if ok and self.cutoff is not None:
            ok = st.set_hi(self.objective_atom, self.cutoff)
        return ok and self.propagate()

    def _probe(self, i, alts):
        """The alternatives that survive propagation, best objective lower bound first."""
        st = self.st
        mark = st.mark()
        scored = []
        obj = self.objective_atom
        for alt in alts:
            if self._apply(i, alt):
                scored.append((st.lo[obj], len(scored), alt))
                self.probed[(i, alt)] = st.domains_since(mark)
            st.undo(mark)
        scored.sort()
        return [alt for _, _, alt in scored]

    def dfs(self):
        """Yield once at every solution (the store then holds it); the caller may tighten
        `self.cutoff` between yields. Raises TimeUp past the deadline."""
        st = self.st
        if not (self.rooted or self.root()):
            return
        lo, hi = st.lo, st.hi
        if self.objective_atom is not None:
            self.prefer = self.flat.value_preference(lo)  # read at the root's bounds, not kept
        # what the root fixed is never a decision: _choose need not look at it again
        groups = []
        for group in self.decision_groups:
            free = [i for i in group if lo[i] != hi[i]]
            free.sort(key=self.degree.__getitem__, reverse=True)  # stable: ties in index order
            groups.append(free)
        self.decision_groups = groups
        stack = self.stack = []
        deadline = self.deadline
        while True:
            self.nodes += 1
            if deadline is not None and self.nodes % _CLOCK_EVERY == 0 and time.perf_counter() > deadline:
                raise TimeUp
            i = self._choose()
            if i is None:
                yield
            else:
                alts = self._alternatives(i)
                if self.objective_atom is not None and len(stack) < PROBE_LEVELS:
                    alts = self._probe(i, alts)
                stack.append([st.mark(), i, alts, 0])
            while stack:
                frame = stack[-1]
                mark, i, alts, pos = frame
                if pos == len(alts):
                    stack.pop()
                    continue
                frame[3] = pos + 1
                if pos:  # the first alternative starts at the mark just taken: nothing to undo
                    st.undo(mark)
                if self._apply(i, alts[pos]):
                    break
            else:
                return

    def values(self):
        """The model variables' values at a solution."""
        return self.st.lo[:self.flat.n_model]

    def objective_value(self):
        atom, offset, sign = self.flat.objective
        return sign * (self.st.lo[atom] + offset)
