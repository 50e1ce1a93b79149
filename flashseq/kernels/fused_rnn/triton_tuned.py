"""The Triton back end's use of the tuning cache: a recorded winner overrides the plan's tiles.

``flashseq-tune --gpu ...`` times the plan model's best candidates (batch tile, warps, stages,
fused/split/stepwise path) and records the fastest per (cell, shape bucket, dtype, GPU) under
the kernel name ``fused_rnn.triton`` (``flashseq.tuning``). ``tuned_plan(plan, device)`` returns
the plan with those fields replaced (the grid recomputed), or the plan itself when nothing is
recorded, tuning is off (``FLASHSEQ_TUNING=off``), the device is not a CUDA device (the
interpreter runs the plan as it is), or the entry does not fit this problem (one warning).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from flashseq import tuning

from .plan import FusedRNNPlan

KERNEL = "fused_rnn.triton"
FIELDS = ("path", "BB", "BH", "BK", "num_warps", "warps_m", "warps_n", "num_stages",
          "programs_per_head", "cluster_size")
PATHS = ("fused", "split", "stepwise")


def bucket_of(cell: str, batch: int, heads: int, head_dim: int) -> dict:
    """The cache bucket of a problem: batch rounded up to a power of two, heads and head_dim
    exact (the tiles depend on DH itself)."""
    return {"cell": cell, "batch": tuning.pow2_bucket(batch), "heads": heads,
            "head_dim": head_dim}


def bucket(plan: FusedRNNPlan) -> dict:
    """The cache bucket of a plan's problem (``bucket_of``)."""
    return bucket_of(plan.cell, plan.batch, plan.heads, plan.head_dim)


def apply_entry(plan: FusedRNNPlan, config: dict) -> FusedRNNPlan:
    """``plan`` with the tuned fields of ``config``; ValueError when they do not fit it."""
    fields = {k: config[k] for k in FIELDS if k in config}
    for name, value in fields.items():
        if name == "path":
            if value not in PATHS:
                raise ValueError(f"path {value!r} is not one of {PATHS}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not an int >= 1")
    tuned = dataclasses.replace(plan, **fields)
    if tuned.BH > tuned.padded_head_dim or tuned.padded_head_dim % tuned.BH:
        raise ValueError(f"BH={tuned.BH} does not divide the padded head size "
                         f"{tuned.padded_head_dim}")
    if tuned.num_warps != tuned.warps_m * tuned.warps_n:
        raise ValueError(f"num_warps={tuned.num_warps} is not warps_m x warps_n")
    grid = (plan.heads * tuned.programs_per_head, -(-plan.batch // tuned.BB))
    return dataclasses.replace(tuned, grid=grid, reason=plan.reason + " (tiles from the tuning "
                               "cache)")


_override: list = [None]


@contextlib.contextmanager
def override(config: dict | None):
    """Inside the block, every CUDA call runs ``config``'s fields (as a cache entry would hold
    them) instead of the cache's; the tuner times candidates this way."""
    old, _override[0] = _override[0], config
    try:
        yield
    finally:
        _override[0] = old


def tuned_plan(plan: FusedRNNPlan, device) -> FusedRNNPlan:
    """The plan with the tuning cache's winner applied (see the module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return plan
    config = _override[0]
    if config is not None:
        return apply_entry(plan, config)  # the tuner's own candidate: an error is a bug there
    config = tuning.lookup(KERNEL, device, bucket(plan), plan.dtype)
    if config is None:
        return plan
    try:
        return apply_entry(plan, config)
    except (TypeError, ValueError, KeyError) as err:
        tuning.warn_once(f"flashseq: ignoring the tuning cache entry for {KERNEL} {bucket(plan)} "
                         f"({err}); the plan's tiles run")
        return plan


__all__ = ["KERNEL", "FIELDS", "bucket_of", "bucket", "apply_entry", "override", "tuned_plan"]
