"""constrint: a small integer constraint solver for tiling problems.

Variables with ranges or value sets, expressions with + - * and ceiling division, linear,
product and divisibility constraints, an optional objective; bound propagation plus depth-first
branch and bound, with the independent parts of a model (those sharing no unfixed variable once
the root is propagated) searched one after the other. `Model.solve()` gives one optimal point, `Model.best(k)` the k best points by
the objective (best first: candidates for an autotuner), `Model.solutions()` every feasible point.
`constrint.cpsat` translates a Model to OR-Tools CP-SAT for cross-checking.
"""
from .expr import cdiv, divides
from .model import Model, Solution

__all__ = ["Model", "Solution", "cdiv", "divides"]
