"""The progress bar handed to suites: tqdm on stderr, shown only once a loop takes a while."""
from __future__ import annotations

from typing import Callable, Iterable

# Seconds before a bar appears: quick loops stay silent, long ones show where they are.
SHOW_AFTER_S = 2.0


def make_progress(enabled: bool, desc: str) -> Callable[[Iterable], Iterable]:
    """A callable(iterable) -> iterable; a bar on stderr when ``enabled`` and tqdm imports."""
    if not enabled:
        return lambda iterable: iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda iterable: iterable

    def progress(iterable: Iterable) -> Iterable:
        return tqdm(iterable, desc=desc, delay=SHOW_AFTER_S, leave=False, dynamic_ncols=True)

    return progress
