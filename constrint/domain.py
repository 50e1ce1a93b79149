"""Variable domains for the search: an interval per variable plus an optional sorted value tuple,
with a trail so backtracking undoes changes instead of copying the store at every node.

Every change is a bound event, 2*i when variable i's lower bound rose and 2*i+1 when its upper
bound fell, so a propagator can wake only on the bounds it reads: `wake[e]` is the bit set of the
propagators (bit k: propagator k) event e wakes, and each change ORs it into `woken`, which the
search's queue takes.

Within one node a bound may move many times (x - y >= 1 with y - x >= 0 over a wide range moves
both bounds by one a pass); compact() then drops the entries undo would not need, so the trail
grows with the number of variables a node changes, not with the number of steps.
"""
from bisect import bisect_left, bisect_right


class DomainStore:
    """Current domains of all (model and auxiliary) variables.

    lo[i], hi[i]: inclusive bounds; vals[i]: None (every integer in [lo, hi]) or a sorted tuple of
    the remaining values, whose first and last entries are always lo[i] and hi[i].
    Every setter returns False when the domain becomes empty (the store is then left as it was
    for that variable) and records the old state on the trail otherwise.
    """
    __slots__ = ("lo", "hi", "vals", "trail", "wake", "woken", "base")

    def __init__(self, lo, hi, vals, wake=None):
        self.lo = list(lo)
        self.hi = list(hi)
        self.vals = list(vals)
        self.trail = []
        # wake[e]: bit set of the propagators bound event e wakes (none without a search)
        self.wake = wake if wake is not None else [0] * (2 * len(self.lo))
        self.woken = 0  # propagators woken by changes not yet taken by the queue
        self.base = 0  # trail length at the last mark() or undo(): no live mark lies above it

    def mark(self):
        """A point to undo back to."""
        self.base = len(self.trail)
        return self.base

    def compact(self):
        """Keep only the oldest trail entry of each variable since the last mark() or undo().

        Undoing to any live mark restores the oldest entry of a variable above that mark, and all
        live marks lie at or below `base`, so the later entries are never read. Call it between
        propagator runs (they compare trail lengths within one run)."""
        trail, base = self.trail, self.base
        if len(trail) - base <= len(self.lo):
            return
        seen, kept = set(), []
        for entry in trail[base:]:
            if entry[0] not in seen:
                seen.add(entry[0])
                kept.append(entry)
        del trail[base:]
        trail.extend(kept)

    def undo(self, mark):
        """Restore every domain changed since `mark`."""
        trail, lo, hi, vals = self.trail, self.lo, self.hi, self.vals
        undone = trail[mark:]
        del trail[mark:]
        self.base = mark
        for i, old_lo, old_hi, old_vals in reversed(undone):  # newest first: the oldest wins
            lo[i] = old_lo
            hi[i] = old_hi
            vals[i] = old_vals
        self.woken = 0

    def domains_since(self, mark):
        """[(i, lo, hi, vals)] now, of every variable changed since `mark` (for replay)."""
        lo, hi, vals = self.lo, self.hi, self.vals
        changed = {entry[0] for entry in self.trail[mark:]}
        return [(i, lo[i], hi[i], vals[i]) for i in changed]

    def replay(self, domains):
        """Set the domains saved by domains_since (recorded on the trail, announcing no events:
        they were a fixed point of the propagators when saved)."""
        trail, lo, hi, vals = self.trail, self.lo, self.hi, self.vals
        for i, new_lo, new_hi, new_vals in domains:
            trail.append((i, lo[i], hi[i], vals[i]))
            lo[i] = new_lo
            hi[i] = new_hi
            vals[i] = new_vals

    def set_lo(self, i, value):
        """Raise the lower bound of variable i to `value` (snapped up to the next allowed value)."""
        lo = self.lo
        old = lo[i]
        if value <= old:
            return True
        hi = self.hi[i]
        if value > hi:
            return False
        vs = self.vals[i]
        self.trail.append((i, old, hi, vs))
        self.woken |= self.wake[2 * i]
        if vs is not None:
            vs = vs[bisect_left(vs, value):]
            self.vals[i] = vs
            value = vs[0]
        lo[i] = value
        return True

    def set_hi(self, i, value):
        """Lower the upper bound of variable i to `value` (snapped down to the previous allowed value)."""
        hi = self.hi
        old = hi[i]
        if value >= old:
            return True
        lo = self.lo[i]
        if value < lo:
            return False
        vs = self.vals[i]
        self.trail.append((i, lo, old, vs))
        self.woken |= self.wake[2 * i + 1]
        if vs is not None:
            vs = vs[:bisect_right(vs, value)]
            self.vals[i] = vs
            value = vs[-1]
        hi[i] = value
        return True

    def fix(self, i, value):
        """Set variable i to `value`; False if `value` is not in its domain."""
        lo, hi = self.lo[i], self.hi[i]
        if value < lo or value > hi:
            return False
        vs = self.vals[i]
        if vs is not None:
            k = bisect_left(vs, value)
            if vs[k] != value:
                return False
        if lo == hi:
            return True
        self.trail.append((i, lo, hi, vs))
        if value > lo:
            self.woken |= self.wake[2 * i]
        if value < hi:
            self.woken |= self.wake[2 * i + 1]
        self.lo[i] = self.hi[i] = value
        if vs is not None:
            self.vals[i] = (value,)
        return True

    def keep(self, i, allowed):
        """Restrict variable i to the sorted tuple `allowed` (a subset of its current values)."""
        if not allowed:
            return False
        vs = self.vals[i]
        if vs is not None and len(allowed) == len(vs):
            return True
        if vs is None and len(allowed) == self.hi[i] - self.lo[i] + 1:
            return True
        lo, hi = self.lo[i], self.hi[i]
        self.trail.append((i, lo, hi, vs))
        if allowed[-1] < hi:
            self.woken |= self.wake[2 * i + 1]
            if allowed[0] > lo:
                self.woken |= self.wake[2 * i]
        else:
            # a lower bound that rose, or only holes: value-set readers (Divides) watch both
            # events of their variables, bound readers are merely woken once for nothing
            self.woken |= self.wake[2 * i]
        self.vals[i] = allowed
        self.lo[i] = allowed[0]
        self.hi[i] = allowed[-1]
        return True

    def remove(self, i, value):
        """Remove one value from variable i's domain."""
        lo, hi = self.lo[i], self.hi[i]
        if value < lo or value > hi:
            return True
        if value == lo:
            return self.set_lo(i, value + 1)
        if value == hi:
            return self.set_hi(i, value - 1)
        vs = self.vals[i]
        if vs is None:
            if hi - lo > 4096:
                return True  # a hole in a huge range is not worth materialising
            vs = tuple(range(lo, hi + 1))
        k = bisect_left(vs, value)
        if k == len(vs) or vs[k] != value:
            return True
        return self.keep(i, vs[:k] + vs[k + 1:])

    def values_of(self, i):
        """Current values of variable i as a tuple (only for small domains)."""
        vs = self.vals[i]
        return vs if vs is not None else tuple(range(self.lo[i], self.hi[i] + 1))

    def size(self, i):
        vs = self.vals[i]
        return len(vs) if vs is not None else self.hi[i] - self.lo[i] + 1
