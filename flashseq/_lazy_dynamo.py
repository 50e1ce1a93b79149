"""torch.compile marks that do not import torch._dynamo (and with it triton) at import time.

``torch.compiler.assume_constant_result`` imports torch._dynamo, whose import loads triton when
it is installed: 1-2 s added to every ``import flashseq`` on a machine that may never compile
anything. Dynamo only reads the mark when it traces the function, and by then it is loaded.
tests/test_import.py checks that the mark set here is the one torch's decorator sets.
"""
from __future__ import annotations

import sys


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)``, without importing torch._dynamo now."""
    if "torch._dynamo" in sys.modules:
        import torch

        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn
