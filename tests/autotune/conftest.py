"""Fixtures of the tuner's tests: a private tuning cache per test."""
import pytest

from flashseq import _jit, tuning


@pytest.fixture
def tune_cache(monkeypatch, tmp_path):
    """$FLASHSEQ_CACHE_DIR pointed at a fresh folder (the CPU extension loaded first, so it is
    not rebuilt there), tuning on, nothing read yet; yields the tune/ folder dispatch reads."""
    if _jit.extension_error() is None:
        _jit.extension()
    monkeypatch.setenv("FLASHSEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(tuning.ENV, raising=False)
    tuning.reload()
    yield tmp_path / "cache" / "tune"
    tuning.reload()
