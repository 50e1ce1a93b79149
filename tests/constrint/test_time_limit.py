"""Time-limit statuses, with the search's clock replaced so the outcome is deterministic."""
import constrint as ci
import constrint.model as model_module
import constrint.search as search_module
from tests.constrint.random_models import is_feasible


class _FakeClock:
    """perf_counter() reads 0 until the watched search has an incumbent (then a time far past any
    deadline); with `always_late` it is past the deadline from the start."""

    def __init__(self, always_late=False):
        self.always_late = always_late
        self.search = None

    def perf_counter(self):
        late = self.always_late or (self.search is not None and self.search.cutoff is not None)
        return 1e18 if late else 0.0


def _watch_search(monkeypatch, clock):
    class WatchedSearch(search_module.Search):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clock.search = self
    monkeypatch.setattr(model_module, "Search", WatchedSearch)
    monkeypatch.setattr(search_module, "time", clock)
    monkeypatch.setattr(search_module, "_CLOCK_EVERY", 1)


def _hard_model():
    # many points and a weak objective bound: the proof of optimality needs thousands of nodes
    m = ci.Model()
    xs = [m.int_var(f"x{k}", 0, 5) for k in range(7)]
    m.add(sum(x * x for x in xs) <= 60)
    m.add(sum((k + 1) * x for k, x in enumerate(xs)) != 17)
    m.maximize(xs[0] * xs[1] - xs[2] * xs[3] + xs[4] * xs[5] * xs[6])
    return m


def test_time_limit_with_incumbent_is_feasible(monkeypatch):
    full = _hard_model().solve()
    assert full.status == "optimal" and full.stats["nodes"] > 20
    m = _hard_model()
    _watch_search(monkeypatch, _FakeClock())
    sol = m.solve(time_limit=1.0)
    assert sol.status == "feasible"
    assert is_feasible(m, sol.values)
    assert sol.objective == m.objective[0].evaluate(sol.values) <= full.objective


def test_time_limit_without_incumbent_is_unknown(monkeypatch):
    _watch_search(monkeypatch, _FakeClock(always_late=True))
    sol = _hard_model().solve(time_limit=1.0)
    assert sol.status == "unknown" and sol.objective is None and not sol
