"""Chunkwise linear recurrences (GLA, delta rule, mLSTM): kernels and their tiling plan.

Layouts and semantics are those of API.md ("Chunkwise linear recurrences"); ``plan.py`` chooses
the chunk and tile sizes with a constrint model.
"""
from .plan import LinearScanPlan, plan_linear_scan

__all__ = ["LinearScanPlan", "plan_linear_scan"]
