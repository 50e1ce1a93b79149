"""Chunkwise linear recurrences (GLA, delta rule, mLSTM): kernels and their tiling plan.

The entry points and their layouts are in ``functional.py`` (``chunk_gla``'s docstring);
``reference.py`` is the step-by-step ground truth, ``chunk_torch.py`` the chunkwise PyTorch path,
``plan.py`` chooses the chunk and tile sizes of the Triton kernels with a constrint model.
"""
from .functional import (chunk_delta_rule, chunk_gla, chunk_mlstm, fused_recurrent_delta_rule,
                         fused_recurrent_gla, fused_recurrent_mlstm)
from .plan import LinearScanPlan, plan_linear_scan

__all__ = ["LinearScanPlan", "plan_linear_scan", "chunk_gla", "chunk_delta_rule", "chunk_mlstm",
           "fused_recurrent_gla", "fused_recurrent_delta_rule", "fused_recurrent_mlstm"]
