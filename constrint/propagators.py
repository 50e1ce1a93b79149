"""Propagators, one class per constraint kind. Each holds variable indices into a DomainStore,
lists them in `watch` (and, where it reads only some bounds, the bound events that can make it
narrow anything in `events`: 2*i for i's lower bound, 2*i+1 for its upper bound; without
`events` it wakes on every change of a watched variable), and `propagate(st)` narrows domains, returning False when it proves the
current node infeasible. Propagation is sound (never removes a value of a feasible point) and
complete on fixed variables (a violated constraint with all its variables fixed always fails).

A propagator with `idempotent = True` repeats its own narrowing until it is at its own fixed point,
so the queue does not wake it for the changes it made itself (a third of all runs were such
re-runs finding nothing); it returns AGAIN instead of True when it stopped after _MAX_PASSES.
"""
from functools import lru_cache
from math import gcd


# Returned by an idempotent propagator that stopped short of its own fixed point (truthy: no
# failure found); the queue then runs it again later.
AGAIN = 2
# Passes an idempotent propagator makes before handing back to the queue: bounds on wide ranges
# can creep (2x - 2y == 1 shrinks them by one a pass), and other propagators may fail sooner.
_MAX_PASSES = 8


class Propagator:
    """Base of the propagators: `events` None (wake on every change of a watched variable) and
    not idempotent unless a class says otherwise."""
    __slots__ = ()
    events = None
    idempotent = False


def _ceil_div(a, b):
    """ceil(a / b) for any signs (b != 0)."""
    return -((-a) // b)


class LinearLe(Propagator):
    """sum(coefs[k] * x[idx[k]]) <= rhs."""
    __slots__ = ("terms", "rhs", "watch", "events")
    idempotent = True  # narrowing moves only bounds the least sum does not read

    def __init__(self, idx, coefs, rhs):
        self.terms = tuple(zip(idx, coefs))
        self.rhs = rhs
        self.watch = tuple(idx)
        # only the least sum matters: lower bounds of positive terms, upper bounds of negative
        # ones (its own narrowing moves the other bounds, so it never wakes itself)
        self.events = tuple([2 * i if a > 0 else 2 * i + 1 for i, a in self.terms])

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        terms = self.terms
        least = 0
        for i, a in terms:
            least += a * lo[i] if a > 0 else a * hi[i]
        slack = self.rhs - least
        if slack < 0:
            return False
        for i, a in terms:
            if a > 0:
                if (hi[i] - lo[i]) * a > slack and not st.set_hi(i, lo[i] + slack // a):
                    return False
            elif (lo[i] - hi[i]) * a > slack and not st.set_lo(i, hi[i] - slack // -a):
                return False
        return True


class LinearEq(Propagator):
    """sum(coefs[k] * x[idx[k]]) == rhs, bounds in both directions, repeated to its fixed point."""
    __slots__ = ("terms", "rhs", "watch")
    idempotent = True

    def __init__(self, idx, coefs, rhs):
        self.terms = tuple(zip(idx, coefs))
        self.rhs = rhs
        self.watch = tuple(idx)

    def propagate(self, st):
        lo, hi, trail = st.lo, st.hi, st.trail
        terms = self.terms
        rhs = self.rhs
        least = most = 0
        for i, a in terms:
            if a > 0:
                least += a * lo[i]
                most += a * hi[i]
            else:
                least += a * hi[i]
                most += a * lo[i]
        up = rhs - least      # room above the least sum
        down = most - rhs     # room below the largest sum
        if up < 0 or down < 0:
            return False
        for _ in range(_MAX_PASSES):
            mark = len(trail)
            widest = 0  # the largest |a| * (hi - lo) of the terms after their narrowing
            for i, a in terms:
                # `up` and `down` follow every narrowing, so later terms see the room left (a
                # room below zero makes the next narrowing empty a domain: infeasible)
                l, h = lo[i], hi[i]
                if a > 0:
                    if (h - l) * a > up:
                        if not st.set_hi(i, l + up // a):
                            return False
                        down -= a * (h - hi[i])
                        h = hi[i]
                    if (h - l) * a > down:
                        if not st.set_lo(i, h - down // a):
                            return False
                        up -= a * (lo[i] - l)
                        l = lo[i]
                    span = (h - l) * a
                else:
                    b = -a
                    if (h - l) * b > up:
                        if not st.set_lo(i, h - up // b):
                            return False
                        down -= b * (lo[i] - l)
                        l = lo[i]
                    if (h - l) * b > down:
                        if not st.set_hi(i, l + down // b):
                            return False
                        up -= b * (h - hi[i])
                        h = hi[i]
                    span = (h - l) * b
                if span > widest:
                    widest = span
            # no term wider than the room left either way: a further pass would narrow nothing
            # (it was a pass of its own on most runs that narrowed)
            if len(trail) == mark or (widest <= up and widest <= down):
                return True
        # still narrowing: on a wide range that is often a creep of one step a pass, which
        # happens when the unfixed terms cannot reach the rest of rhs at all (2x - 2y == 1 - z
        # at z = 0, say): the gcd of their coefficients must divide it
        return AGAIN if _residue_possible(st, terms, rhs) else False


def _residue_possible(st, terms, rhs):
    """Whether gcd(coefficients of the unfixed terms) divides rhs minus the fixed terms."""
    lo, hi = st.lo, st.hi
    g = 0
    for i, a in terms:
        if lo[i] == hi[i]:
            rhs -= a * lo[i]
        else:
            g = gcd(g, a)
    return rhs % g == 0 if g else rhs == 0


class LinearEq2(Propagator):
    """a * x + b * y == rhs: the common two-term case of LinearEq (e.g. aux == 8 * x + 3)."""
    __slots__ = ("x", "a", "y", "b", "rhs", "watch")
    idempotent = True

    def __init__(self, idx, coefs, rhs):
        (self.x, self.y), (self.a, self.b) = idx, coefs
        self.rhs = rhs
        self.watch = (self.x, self.y)

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        x, y, a, b, rhs = self.x, self.y, self.a, self.b, self.rhs
        # x = (rhs - b*y) / a over y's bounds, then y against the narrowed x, and so on: once a
        # step after the first narrows nothing, the next one would read unchanged bounds
        for step in range(2 * _MAX_PASSES):
            if b > 0:  # a * x = rhs - b * y lies in [t_lo, t_hi]
                t_lo, t_hi = rhs - b * hi[y], rhs - b * lo[y]
            else:
                t_lo, t_hi = rhs - b * lo[y], rhs - b * hi[y]
            if a > 0:
                new_lo, new_hi = -(-t_lo // a), t_hi // a
            else:
                new_lo, new_hi = -(-t_hi // a), t_lo // a
            narrowed = False
            if new_lo > lo[x]:
                if not st.set_lo(x, new_lo):
                    return False
                narrowed = True
            if new_hi < hi[x]:
                if not st.set_hi(x, new_hi):
                    return False
                narrowed = True
            if step and not narrowed:
                return True
            x, y, a, b = y, x, b, a
        return AGAIN


class LinearNe(Propagator):
    """sum(coefs[k] * x[idx[k]]) != rhs: acts once at most one variable is unfixed."""
    __slots__ = ("terms", "rhs", "watch")
    idempotent = True  # removing the one forbidden value leaves nothing more to do

    def __init__(self, idx, coefs, rhs):
        self.terms = tuple(zip(idx, coefs))
        self.rhs = rhs
        self.watch = tuple(idx)

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        free = None
        total = 0
        for i, a in self.terms:
            if lo[i] == hi[i]:
                total += a * lo[i]
            elif free is None:
                free = (i, a)
            else:
                return True
        if free is None:
            return total != self.rhs
        i, a = free
        rest = self.rhs - total
        if rest % a:
            return True
        return st.remove(i, rest // a)


class ProductNonneg(Propagator):
    """out == coef * x1 * ... * xk where no factor can be negative (the tiling models' case) and
    coef >= 1 is the product of the factors known when the model was flattened."""
    __slots__ = ("out", "factors", "coef", "watch")
    idempotent = True

    def __init__(self, out, factors, coef=1):
        self.out = out
        self.factors = tuple(factors)
        self.coef = coef
        self.watch = (out,) + self.factors

    def propagate(self, st):
        lo, hi, trail = st.lo, st.hi, st.trail
        factors = self.factors
        out = self.out
        coef = self.coef
        for _ in range(_MAX_PASSES):
            plo = phi = coef
            for i in factors:
                plo *= lo[i]
                phi *= hi[i]
            if plo > lo[out] and not st.set_lo(out, plo):
                return False
            if phi < hi[out] and not st.set_hi(out, phi):
                return False
            olo, ohi = lo[out], hi[out]
            if olo == plo and ohi == phi:
                return True
            mark = len(trail)
            for pos, i in enumerate(factors):
                # bounds of the other factors' product, from the bounds at entry (still valid:
                # narrowing earlier factors only makes these looser, never wrong)
                xl, xh = lo[i], hi[i]
                if xl == xh:
                    # a fixed factor: out's bounds from the product, set above, already hold
                    # what narrowing it would check
                    continue
                rest_lo = plo // xl if xl else coef * _product_except(lo, factors, pos)
                rest_hi = phi // xh
                if rest_hi and olo > xl * rest_hi and not st.set_lo(i, -(-olo // rest_hi)):
                    return False
                if rest_lo and ohi < xh * rest_lo and not st.set_hi(i, ohi // rest_lo):
                    return False
            if len(trail) == mark:
                return True  # factors unchanged: out's bounds from them are as computed
        return AGAIN


class ProductNonneg2(Propagator):
    """out == coef * x * y with x, y >= 0 and a constant coef >= 1: the commonest product (a
    tile = count * size), one call per run where ProductNonneg dispatched to it (two-factor runs
    were half of all propagator runs on the FlashRNN-class models)."""
    __slots__ = ("out", "x", "y", "coef", "watch")
    idempotent = True

    def __init__(self, out, x, y, coef=1):
        self.out, self.x, self.y, self.coef = out, x, y, coef
        self.watch = (out, x, y)

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        out, x, y, c = self.out, self.x, self.y, self.coef
        passes = _MAX_PASSES
        while passes:
            passes -= 1
            xl, xh = lo[x], hi[x]
            yl, yh = c * lo[y], c * hi[y]  # bounds of c * y
            plo, phi = xl * yl, xh * yh
            olo, ohi = lo[out], hi[out]
            if plo > olo:
                if not st.set_lo(out, plo):
                    return False
                olo = lo[out]
            if phi < ohi:
                if not st.set_hi(out, phi):
                    return False
                ohi = hi[out]
            if olo == plo and ohi == phi:
                return True
            # x in [olo / (c yh), ohi / (c yl)], then y against the narrowed x; each condition
            # below holds only where its setter really moves a bound
            narrowed = False
            if yh and olo > xl * yh:
                if not st.set_lo(x, -(-olo // yh)):
                    return False
                narrowed = True
            if yl and ohi < xh * yl:
                if not st.set_hi(x, ohi // yl):
                    return False
                narrowed = True
            xl, xh = c * lo[x], c * hi[x]  # bounds of c * x
            yl, yh = lo[y], hi[y]
            if xh and olo > yl * xh:
                if not st.set_lo(y, -(-olo // xh)):
                    return False
                narrowed = True
            if xl and ohi < yh * xl:
                if not st.set_hi(y, ohi // xl):
                    return False
                narrowed = True
            if not narrowed:
                return True  # x and y unchanged: out's bounds from them are as computed
        return AGAIN


class ProductNonneg3(Propagator):
    """out == coef * x * y * z with x, y, z >= 0 and a constant coef >= 1 (a tile of three
    counts and sizes): ProductNonneg unrolled, each factor against the others' current bounds.
    A fifth of the runs to a FlashRNN-class first point were of three free factors, each
    walking the generic loop (enumerate, a division per factor for the others' product)."""
    __slots__ = ("out", "x", "y", "z", "coef", "watch")
    idempotent = True

    def __init__(self, out, x, y, z, coef=1):
        self.out, self.x, self.y, self.z, self.coef = out, x, y, z, coef
        self.watch = (out, x, y, z)

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        out, x, y, z, c = self.out, self.x, self.y, self.z, self.coef
        passes = _MAX_PASSES
        while passes:
            passes -= 1
            xl, xh, yl, yh, zl, zh = lo[x], hi[x], lo[y], hi[y], lo[z], hi[z]
            plo, phi = c * xl * yl * zl, c * xh * yh * zh
            olo, ohi = lo[out], hi[out]
            if plo > olo:
                if not st.set_lo(out, plo):
                    return False
                olo = lo[out]
            if phi < ohi:
                if not st.set_hi(out, phi):
                    return False
                ohi = hi[out]
            if olo == plo and ohi == phi:
                return True
            # each factor in [olo / rest_hi, ohi / rest_lo], rest = c * the other two, read
            # after the narrowing of the factors before it
            narrowed = False
            rl, rh = c * yl * zl, c * yh * zh
            if rh and olo > xl * rh:
                if not st.set_lo(x, -(-olo // rh)):
                    return False
                narrowed = True
                xl = lo[x]
            if rl and ohi < xh * rl:
                if not st.set_hi(x, ohi // rl):
                    return False
                narrowed = True
                xh = hi[x]
            rl, rh = c * xl * zl, c * xh * zh
            if rh and olo > yl * rh:
                if not st.set_lo(y, -(-olo // rh)):
                    return False
                narrowed = True
                yl = lo[y]
            if rl and ohi < yh * rl:
                if not st.set_hi(y, ohi // rl):
                    return False
                narrowed = True
                yh = hi[y]
            rl, rh = c * xl * yl, c * xh * yh
            if rh and olo > zl * rh:
                if not st.set_lo(z, -(-olo // rh)):
                    return False
                narrowed = True
            if rl and ohi < zh * rl:
                if not st.set_hi(z, ohi // rl):
                    return False
                narrowed = True
            if not narrowed:
                return True  # factors unchanged: out's bounds from them are as computed
        return AGAIN


def product_nonneg(out, factors, lo, hi):
    """The propagator of out == product of `factors` (all >= 0 in lo): factors fixed in lo/hi
    become one constant coefficient; two or three others make a ProductNonneg2 or 3."""
    coef, free = 1, []
    for i in factors:
        if lo[i] == hi[i]:
            coef *= lo[i]
        else:
            free.append(i)
    if coef >= 1:
        if len(free) == 2:
            return ProductNonneg2(out, free[0], free[1], coef)
        if len(free) == 3:
            return ProductNonneg3(out, free[0], free[1], free[2], coef)
        if len(free) > 2:
            return ProductNonneg(out, free, coef)
    return ProductNonneg(out, factors)


def _product_except(bounds, factors, skip):
    """Product of bounds[i] over the factors except the one at position `skip`."""
    out = 1
    for pos, i in enumerate(factors):
        if pos != skip:
            out *= bounds[i]
    return out


def _mul_interval(a_lo, a_hi, b_lo, b_hi):
    c = (a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi)
    return min(c), max(c)


class Product(Propagator):
    """out == x1 * ... * xk for factors of any sign (interval arithmetic)."""
    __slots__ = ("out", "factors", "watch")

    def __init__(self, out, factors):
        self.out = out
        self.factors = tuple(factors)
        self.watch = (out,) + self.factors

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        factors = self.factors
        plo = phi = 1
        for i in factors:
            plo, phi = _mul_interval(plo, phi, lo[i], hi[i])
        out = self.out
        if not (st.set_lo(out, plo) and st.set_hi(out, phi)):
            return False
        for k, i in enumerate(factors):
            rlo = rhi = 1
            for j, f in enumerate(factors):
                if j != k:
                    rlo, rhi = _mul_interval(rlo, rhi, lo[f], hi[f])
            if rlo <= 0 <= rhi:
                continue  # the rest may be zero: x_i is unconstrained by out
            olo, ohi = lo[out], hi[out]
            q_lo = min(_ceil_div(olo, rlo), _ceil_div(olo, rhi), _ceil_div(ohi, rlo), _ceil_div(ohi, rhi))
            q_hi = max(olo // rlo, olo // rhi, ohi // rlo, ohi // rhi)
            if not (st.set_lo(i, q_lo) and st.set_hi(i, q_hi)):
                return False
        return True


class CeilDiv(Propagator):
    """out == ceil(num / den) with den > 0 (checked when the model is flattened)."""
    __slots__ = ("out", "num", "den", "watch")
    idempotent = True

    def __init__(self, out, num, den):
        self.out = out
        self.num = num
        self.den = den
        self.watch = (out, num, den)

    def propagate(self, st):
        lo, hi, trail = st.lo, st.hi, st.trail
        out, num, den = self.out, self.num, self.den
        for _ in range(_MAX_PASSES):
            n_lo, n_hi, d_lo, d_hi = lo[num], hi[num], lo[den], hi[den]
            # ceil(n/d) rises with n, and with d it falls for n >= 0 and rises for n < 0
            z_lo = -(-n_lo // (d_hi if n_lo >= 0 else d_lo))
            z_hi = -(-n_hi // (d_lo if n_hi >= 0 else d_hi))
            if z_lo > lo[out] and not st.set_lo(out, z_lo):
                return False
            if z_hi < hi[out] and not st.set_hi(out, z_hi):
                return False
            if z_lo == lo[out] and z_hi == hi[out] and d_lo == d_hi:
                return True  # a constant divisor: n's bounds already give exactly out's bounds
            z_lo, z_hi = lo[out], hi[out]
            mark = len(trail)
            # out = ceil(n/d)  <=>  (out - 1) * d + 1 <= n <= out * d
            bound = (z_lo - 1) * (d_lo if z_lo >= 1 else d_hi) + 1
            if bound > n_lo and not st.set_lo(num, bound):
                return False
            bound = z_hi * (d_hi if z_hi >= 0 else d_lo)
            if bound < n_hi and not st.set_hi(num, bound):
                return False
            n_lo, n_hi = lo[num], hi[num]
            if z_lo > 0:  # d >= n / out
                bound = -(-n_lo // (z_hi if n_lo >= 0 else z_lo))
                if bound > d_lo and not st.set_lo(den, bound):
                    return False
            if z_lo > 1:  # d <= (n - 1) / (out - 1)
                bound = (n_hi - 1) // ((z_lo if n_hi >= 1 else z_hi) - 1)
                if bound < hi[den] and not st.set_hi(den, bound):
                    return False
            if len(trail) == mark:
                return True  # num and den unchanged: out's bounds from them are as computed
        return AGAIN


# trial division up to sqrt(2^40) = 2^20 steps (~0.1 s, once per value thanks to the cache)
_DIVISOR_TABLE_LIMIT = 1 << 40
# Divisor domains up to this many values are filtered against the dividend's range.
_SMALL_DIVISOR_SET = 64


@lru_cache(maxsize=4096)
def divisors(n):
    """Sorted tuple of the positive divisors of |n| (n != 0)."""
    n = abs(n)
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return tuple(small + large[::-1])


class Divides(Propagator):
    """dividend % divisor == 0 with divisor > 0 (checked when the model is flattened)."""
    __slots__ = ("divisor", "dividend", "watch")

    def __init__(self, divisor, dividend):
        self.divisor = divisor
        self.dividend = dividend
        self.watch = (divisor, dividend)

    def propagate(self, st):
        lo, hi = st.lo, st.hi
        a, b = self.divisor, self.dividend
        if lo[b] == hi[b]:
            n = lo[b]
            if n == 0:
                return True
            if st.vals[a] is not None:
                allowed = tuple(v for v in st.vals[a] if n % v == 0)
            elif hi[a] - lo[a] < 64:
                allowed = tuple(v for v in range(lo[a], hi[a] + 1) if n % v == 0)
            elif abs(n) <= _DIVISOR_TABLE_LIMIT:
                allowed = tuple(v for v in divisors(n) if lo[a] <= v <= hi[a])
            else:
                return True  # too large to factor by trial division; checked once `a` is fixed
            return st.keep(a, allowed)
        if lo[a] == hi[a]:
            d = lo[a]
            if st.vals[b] is not None:
                return st.keep(b, tuple(v for v in st.vals[b] if v % d == 0))
            return st.set_lo(b, _ceil_div(lo[b], d) * d) and st.set_hi(b, hi[b] // d * d)
        if lo[b] > 0 and not st.set_hi(a, hi[b]):  # a nonzero multiple is at least the divisor
            return False
        if hi[b] < 0 and not st.set_hi(a, -lo[b]):
            return False
        if st.vals[a] is None and hi[a] - lo[a] >= _SMALL_DIVISOR_SET:
            return True
        # few candidate divisors: keep those with a multiple in b's range, and move b's bounds
        # to the nearest multiple of any of them
        b_lo, b_hi = lo[b], hi[b]
        allowed = tuple(d for d in st.values_of(a) if b_hi // d * d >= b_lo)
        if not st.keep(a, allowed):
            return False
        return (st.set_lo(b, min(_ceil_div(b_lo, d) * d for d in allowed))
                and st.set_hi(b, max(b_hi // d * d for d in allowed)))
