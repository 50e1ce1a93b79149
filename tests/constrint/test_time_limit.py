"""Time-limit statuses, with the search's clock replaced so the outcome is deterministic."""
import constrint as ci
import constrint.search as search_module
from tests.constrint.random_models import is_feasible


class _FakeClock:
    """perf_counter() returns 0 for the first `calls` look-ups, then a time far past any deadline."""

    def __init__(self, calls):
        self.calls = calls

    def perf_counter(self):
        self.calls -= 1
        return 0.0 if self.calls >= 0 else 1e18


def _hard_model():
    # many points and a weak objective bound: the proof of optimality needs thousands of nodes
    m = ci.Model()
    xs = [m.int_var(f"x{k}", 0, 6) for k in range(7)]
    m.add(sum(x * x for x in xs) <= 60)
    m.add(sum((k + 1) * x for k, x in enumerate(xs)) != 17)
    m.maximize(xs[0] * xs[1] - xs[2] * xs[3] + xs[4] * xs[5] * xs[6])
    return m


def test_time_limit_with_incumbent_is_feasible(monkeypatch):
    monkeypatch.setattr(search_module, "_CLOCK_EVERY", 1)
    full = _hard_model().solve()
    assert full.status == "optimal" and full.stats["nodes"] > 200
    m = _hard_model()
    monkeypatch.setattr(search_module, "time", _FakeClock(calls=150))
    sol = m.solve(time_limit=1.0)
    assert sol.status == "feasible"
    assert is_feasible(m, sol.values)
    assert sol.objective == m.objective[0].evaluate(sol.values) <= full.objective


def test_time_limit_without_incumbent_is_unknown(monkeypatch):
    monkeypatch.setattr(search_module, "_CLOCK_EVERY", 1)
    monkeypatch.setattr(search_module, "time", _FakeClock(calls=0))
    sol = _hard_model().solve(time_limit=1.0)
    assert sol.status == "unknown" and sol.objective is None and not sol
