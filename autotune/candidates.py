"""Candidates the tuner times: the plan model's best K feasible configurations by its cost model.

GPU (``gpu_candidates``): ``flashseq.kernels.fused_rnn.plan.build_model`` (the fused and split
paths) asked for ``best(k)``; when it has no feasible point (weights too large for chip), the
stepwise model's ``best(k)``. Each candidate carries the plan model's predicted registers per
thread, shared memory and step time, computed by the same ``resources`` formulas the plan uses.

CPU (``cpu_candidates``): ``flashseq.kernels.fused_rnn.cpu_config.candidates``, the CPU loop's
knob model ranked by its cost estimate.
"""
from __future__ import annotations

import torch

from flashseq.kernels.fused_rnn import cpu_config
from flashseq.kernels.fused_rnn import plan as plan_module

# The fields of a GPU candidate that a cache entry stores and the Triton dispatch applies.
PLAN_FIELDS = ("path", "BB", "BH", "BK", "num_warps", "warps_m", "warps_n", "num_stages",
               "programs_per_head", "cluster_size")


def _onchip(sol, v, c, backend) -> dict:
    cdiv = plan_module._cdiv_int
    vals = {k: sol[x] for k, x in v.items()}
    r = plan_module.resources(vals, c, backend, cdiv)
    return {"path": "split" if vals["split"] else "fused", "BB": vals["BB"], "BH": vals["BH"],
            "BK": r["BK"], "num_warps": vals["WM"] * vals["WN"], "warps_m": vals["WM"],
            "warps_n": vals["WN"], "num_stages": vals["stages"], "programs_per_head": r["P"],
            "cluster_size": r["P"] if vals["cluster"] else 1,
            "registers_per_thread": r["regs"], "shared_memory_bytes": max(r["smem_terms"]),
            "predicted_step_ns": r["time_ps"] / 1000}


def _stepwise(sol, v, c) -> dict:
    cdiv = plan_module._cdiv_int
    vals = {k: sol[x] for k, x in v.items()}
    r = plan_module.stepwise_resources(vals, c, cdiv)
    return {"path": "stepwise", "BB": vals["BB"], "BH": vals["BH"], "BK": vals["BK"],
            "num_warps": vals["WM"] * vals["WN"], "warps_m": vals["WM"], "warps_n": vals["WN"],
            "num_stages": vals["stages"], "programs_per_head": cdiv(c.DHP, vals["BH"]),
            "cluster_size": 1, "registers_per_thread": r["regs"],
            "shared_memory_bytes": r["smem"], "predicted_step_ns": r["time_ps"] / 1000}


def gpu_candidates(cell: str, batch: int, heads: int, head_dim: int, dtype, gpu,
                   backend: str = "triton", k: int = 6, time_limit: float = 10.0) -> list[dict]:
    """The k best tilings of one fused_rnn problem on ``gpu`` (a GPUSpec or name), best first
    by predicted step time: dicts with PLAN_FIELDS plus registers_per_thread,
    shared_memory_bytes and predicted_step_ns (all from the plan model; nothing is built)."""
    gpu = plan_module.check_gpu(gpu)
    dtype_key = plan_module.check_dtype(dtype)
    cell_obj = plan_module._check_cell(cell)
    c = plan_module._consts(cell_obj, batch, heads, head_dim, dtype_key, gpu, backend)
    model, v = plan_module.build_model(cell, batch, heads, head_dim, dtype, gpu, backend)
    found = [_onchip(s, v, c, backend) for s in model.best(k, time_limit=time_limit)]
    if found:
        return found
    model, v = plan_module.build_stepwise_model(cell, batch, heads, head_dim, dtype, gpu, backend)
    cs = plan_module._consts(cell_obj, batch, heads, head_dim, dtype_key, gpu, "triton")
    return [_stepwise(s, v, cs) for s in model.best(k, time_limit=time_limit)]


def cpu_candidates(cell: str, batch: int, heads: int, head_dim: int, dtype=torch.float32,
                   k: int = 6) -> list:
    """[(CpuConfig, estimated ns per step)], best first (see cpu_config.candidates)."""
    return cpu_config.candidates(cell, batch, heads, head_dim, dtype, k=k)


__all__ = ["PLAN_FIELDS", "gpu_candidates", "cpu_candidates"]
