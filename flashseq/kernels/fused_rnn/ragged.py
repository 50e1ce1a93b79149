"""Ragged batches on a loop that multiplies every row at every step: skip the finished rows.

A per-step GEMM over all B rows costs the same whether a row is still running or already past
its length. With lengths spread over 1..T that wastes about half the work (torch.nn.LSTM's packed
path shrinks its batch as sequences end, which is why its packed forward beats its padded one).
Here the rows are sorted by length, time is cut into a few segments, and each segment runs on
the prefix of rows still active at its start, carrying the states from segment to segment. Each
row's recurrence is unchanged, so the results are the same up to GEMM rounding, and autograd
flows through the slicing and concatenation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Beyond about 8 segments the extra launches and copies cost more than the rows they save.
MAX_SEGMENTS = 8
# Segment only when it saves at least this fraction of the row-steps.
MIN_SAVING = 0.2


def plan_segments(sorted_lengths: list[int], max_segments: int = MAX_SEGMENTS):
    """Segments [(t0, t1, active_rows)] for lengths sorted in descending order.

    Cuts fall on the lengths at evenly spaced row quantiles, so each segment ends where a
    group of rows has ended. Returns the segments and the fraction of row-steps they run
    (1.0 = no saving against running every row for max(lengths) steps).
    """
    batch, t_max = len(sorted_lengths), sorted_lengths[0]
    if t_max == 0:
        return [], 0.0
    ascending = sorted_lengths[::-1]
    cuts = {ascending[(k * batch) // max_segments] for k in range(max_segments)}
    bounds = [0] + sorted(c for c in cuts if 0 < c < t_max) + [t_max]
    segments, work = [], 0
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        active = sum(1 for n in sorted_lengths if n > t0)
        segments.append((t0, t1, active))
        work += active * (t1 - t0)
    return segments, work / (batch * t_max)


def run_ragged(run, wx, r, b, states, lengths, *, min_saving: float = MIN_SAVING):
    """``run(wx, r, b, states, lengths) -> (h, last_states)`` over only the active rows.

    Layouts as ``flashseq.ops.fused_rnn``: wx [B, T, G, NH, DH], states [S, B, NH, DH],
    lengths [B] int64. Falls through to one plain ``run`` call when segmenting saves less than
    ``min_saving`` of the row-steps.
    """
    B, T = wx.shape[:2]
    lengths_cpu = lengths.cpu()
    order = torch.argsort(lengths_cpu, descending=True, stable=True)
    sorted_lengths = lengths_cpu[order].tolist()
    segments, work = plan_segments(sorted_lengths)
    if 1.0 - work * sorted_lengths[0] / T < min_saving:
        return run(wx, r, b, states, lengths)

    identity = bool(torch.equal(order, torch.arange(B)))
    wx_sorted = wx if identity else wx.index_select(0, order.to(wx.device))
    state = states if identity else states.index_select(1, order.to(states.device))
    sorted_len = lengths_cpu[order].to(wx.device)
    h_parts = []
    for t0, t1, active in segments:
        seg_len = (sorted_len[:active] - t0).clamp(max=t1 - t0)
        full = sorted_lengths[active - 1] >= t1  # every active row runs the whole segment
        h_seg, last_seg = run(wx_sorted[:active, t0:t1], r, b, state[:, :active],
                              None if full else seg_len)
        h_parts.append(F.pad(h_seg, (0, 0, 0, 0, 0, 0, 0, B - active)))  # rows past: output 0
        state = torch.cat([last_seg, state[:, active:]], dim=1)
    t_max = sorted_lengths[0]
    if t_max < T:  # steps after the longest row: every output is 0
        h_parts.append(wx.new_zeros(B, T - t_max, *wx.shape[3:]))
    h = torch.cat(h_parts, dim=1)
    if identity:
        return h, state
    inverse = torch.argsort(order).to(wx.device)
    return h.index_select(0, inverse), state.index_select(1, inverse)
