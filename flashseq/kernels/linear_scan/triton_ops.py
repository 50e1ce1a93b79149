"""``backend="triton"`` of the chunkwise linear recurrences: which ops have kernels, and the calls.

Triton is imported only inside the calls, so importing flashseq never imports it.
"""
from __future__ import annotations

CHUNK_OPS: tuple = ()
RECURRENT_OPS: tuple = ()


def run(op: str, recurrent: bool, *args, **kwargs):
    raise NotImplementedError(f"no Triton kernel for {op!r} ({'recurrent' if recurrent else 'chunk'})")
