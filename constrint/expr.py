"""Expression and constraint nodes with operator overloads.

Nodes are immutable and only describe the model; `flatten.py` turns them into the solver's
internal form once per solve. Comparisons return constraint objects, so `bool()` on them (a
stray `if x < 3:`) raises instead of silently answering a question about object identity.
"""
import operator

_BOOL_MSG = ("constrint {kind} has no truth value: `{text}` is a constraint for Model.add(), "
             "not a Python condition")


def as_int(value, what):
    """Return `value` as a Python int, or raise TypeError naming `what` (bools and floats refused)."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    return operator.index(value)


def as_expr(value, what="operand"):
    """Wrap an int as Const; pass expressions through; refuse anything else with TypeError."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, (Compare, Divides)):
        raise TypeError(f"{what} is a constraint ({value}), not an expression")
    return Const(as_int(value, f"constrint {what}"))


class Expr:
    """Base of every integer expression: supports + - * (with ints and expressions) and comparisons."""
    __slots__ = ()

    def __add__(self, other):
        return Sum.build(((1, self), (1, as_expr(other))))

    def __radd__(self, other):
        return Sum.build(((1, as_expr(other)), (1, self)))

    def __sub__(self, other):
        return Sum.build(((1, self), (-1, as_expr(other))))

    def __rsub__(self, other):
        return Sum.build(((1, as_expr(other)), (-1, self)))

    def __neg__(self):
        return Sum.build(((-1, self),))

    def __pos__(self):
        return self

    def __mul__(self, other):
        return _multiply(self, as_expr(other))

    def __rmul__(self, other):
        return _multiply(as_expr(other), self)

    def __pow__(self, other):
        raise TypeError("constrint has no '**': write the product out with '*', e.g. x * x * x")

    __rpow__ = __pow__

    def _no_division(self, other):
        raise TypeError("constrint has no '/' or '//': use ci.cdiv(a, b) for ceiling division "
                        "and ci.divides(a, b) for exact divisibility")

    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _no_division
    __mod__ = __rmod__ = _no_division

    def __le__(self, other):
        return Compare(self, "<=", as_expr(other))

    def __ge__(self, other):
        return Compare(self, ">=", as_expr(other))

    def __lt__(self, other):
        return Compare(self, "<", as_expr(other))

    def __gt__(self, other):
        return Compare(self, ">", as_expr(other))

    def __eq__(self, other):
        return Compare(self, "==", as_expr(other))

    def __ne__(self, other):
        return Compare(self, "!=", as_expr(other))

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError(_BOOL_MSG.format(kind="expression", text=self))

    def __repr__(self):
        return f"<{type(self).__name__} {self}>"

    def children(self):
        """Sub-expressions, for walks over the tree."""
        return ()


class Const(Expr):
    """An integer constant."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def evaluate(self, values):
        return self.value

    def __str__(self):
        return str(self.value)


class Var(Expr):
    """A model variable; create it with Model.int_var, never directly."""
    __slots__ = ("model", "name", "index", "lo", "hi", "values")

    def __init__(self, model, name, index, lo, hi, values):
        self.model = model
        self.name = name
        self.index = index
        self.lo = lo
        self.hi = hi
        self.values = values  # sorted tuple of allowed values, or None for the range [lo, hi]

    def evaluate(self, values):
        return values[self.name]

    def __str__(self):
        return self.name


class Sum(Expr):
    """sum(coef * expr) + const; nested sums are merged on construction so trees stay shallow."""
    __slots__ = ("items", "const")

    def __init__(self, items, const):
        self.items = items  # tuple of (int coef, non-Const Expr)
        self.const = const

    @staticmethod
    def build(pairs):
        items = []
        const = 0
        for coef, expr in pairs:
            if isinstance(expr, Const):
                const += coef * expr.value
            elif isinstance(expr, Sum):
                const += coef * expr.const
                items.extend((coef * c, e) for c, e in expr.items)
            elif coef:
                items.append((coef, expr))
        if not items:
            return Const(const)
        if len(items) == 1 and const == 0 and items[0][0] == 1:
            return items[0][1]
        return Sum(tuple(items), const)

    def evaluate(self, values):
        return sum(c * e.evaluate(values) for c, e in self.items) + self.const

    def children(self):
        return tuple(e for _, e in self.items)

    def __str__(self):
        parts = []
        for coef, expr in self.items:
            text = str(expr)
            if isinstance(expr, Sum):
                text = f"({text})"
            mag = abs(coef)
            term = text if mag == 1 else f"{mag} * {text}"
            if not parts:
                parts.append(term if coef > 0 else f"-{term}")
            else:
                parts.append(("+ " if coef > 0 else "- ") + term)
        if self.const:
            parts.append(("+ " if self.const > 0 else "- ") + str(abs(self.const)))
        return " ".join(parts)


class Product(Expr):
    """Product of two or more non-constant factors (constant factors become Sum coefficients)."""
    __slots__ = ("factors",)

    def __init__(self, factors):
        self.factors = factors

    def evaluate(self, values):
        out = 1
        for f in self.factors:
            out *= f.evaluate(values)
        return out

    def children(self):
        return self.factors

    def __str__(self):
        return " * ".join(f"({f})" if isinstance(f, Sum) else str(f) for f in self.factors)


def _multiply(a, b):
    if isinstance(a, Const):
        return Sum.build(((a.value, b),))
    if isinstance(b, Const):
        return Sum.build(((b.value, a),))
    factors = []
    for side in (a, b):
        factors.extend(side.factors if isinstance(side, Product) else (side,))
    return Product(tuple(factors))


class CDiv(Expr):
    """Ceiling division ceil(num / den) for den > 0, i.e. -(-num // den)."""
    __slots__ = ("num", "den")

    def __init__(self, num, den):
        self.num = num
        self.den = den

    def evaluate(self, values):
        den = self.den.evaluate(values)
        if den <= 0:
            raise ValueError(f"cdiv divisor {self.den} evaluated to {den}; it must be positive")
        return -(-self.num.evaluate(values) // den)

    def children(self):
        return (self.num, self.den)

    def __str__(self):
        return f"cdiv({self.num}, {self.den})"


def cdiv(num, den):
    """Ceiling division of two integer expressions (or ints); the divisor must be positive."""
    num = as_expr(num, "cdiv numerator")
    den = as_expr(den, "cdiv divisor")
    if isinstance(num, Const) and isinstance(den, Const):
        if den.value <= 0:
            raise ValueError(f"cdiv divisor must be positive, got {den.value}")
        return Const(-(-num.value // den.value))
    return CDiv(num, den)


class Compare:
    """A comparison `lhs op rhs`, op in <= >= < > == !=; hand it to Model.add()."""
    __slots__ = ("lhs", "op", "rhs")
    _CHECK = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
              "==": operator.eq, "!=": operator.ne}

    def __init__(self, lhs, op, rhs):
        self.lhs = lhs
        self.op = op
        self.rhs = rhs

    def is_satisfied(self, values):
        """Plain evaluation on a {name: int} assignment."""
        return self._CHECK[self.op](self.lhs.evaluate(values), self.rhs.evaluate(values))

    def expressions(self):
        return (self.lhs, self.rhs)

    def __bool__(self):
        raise TypeError(_BOOL_MSG.format(kind="constraint", text=self))

    def __str__(self):
        return f"{self.lhs} {self.op} {self.rhs}"

    __repr__ = __str__


class Divides:
    """`divisor` divides `dividend` exactly (dividend % divisor == 0, divisor > 0)."""
    __slots__ = ("divisor", "dividend")

    def __init__(self, divisor, dividend):
        self.divisor = divisor
        self.dividend = dividend

    def is_satisfied(self, values):
        d = self.divisor.evaluate(values)
        return d > 0 and self.dividend.evaluate(values) % d == 0

    def expressions(self):
        return (self.divisor, self.dividend)

    def __bool__(self):
        raise TypeError(_BOOL_MSG.format(kind="constraint", text=self))

    def __str__(self):
        return f"divides({self.divisor}, {self.dividend})"

    __repr__ = __str__


def divides(divisor, dividend):
    """Constraint: `divisor` (> 0) divides `dividend` exactly; either side may be an expression."""
    return Divides(as_expr(divisor, "divides divisor"), as_expr(dividend, "divides dividend"))


def walk(expr):
    """Yield every node of an expression tree (iteratively, so deep trees are fine)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children())
