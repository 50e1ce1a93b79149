"""pLSTM layers: ``pLSTM1d`` (sequences [B, T, C]) and ``pLSTM2d`` (images [B, X, Y, C]).

Each layer projects x to per-head queries, keys and values (shared by all directions) and to
scalar source/transition/mark/direct gates (one set per direction and head), runs
``flashseq.ops.plstm_1d`` / ``plstm_2d``, averages the directions, applies a per-head RMS norm
and an output projection. It is a token mixer: a ViT-style block is
``x = x + layer(norm1(x)); x = x + mlp(norm2(x))``.

Modes (Pöppel et al. 2025):
  "P"  (propagation) transitions are column-substochastic: every node splits what enters it
       between its two outgoing edges with an orientation o = sigmoid(.) (and a decay
       sigmoid(.)), its source likewise (o to the right, 1 - o down): long-range propagation
       neither explodes nor vanishes.
  "D"  (diffusion) the grid is cut to a multitree (chirality "L" or "R" chooses which turn is
       kept) and transitions are tanh-bounded: each pair of nodes has at most one path.
In 1D the two differ only in the transition's squashing: sigmoid (P) or tanh (D).

Initialisation (after the reference implementation): every gate weight starts at zero, so the
gates start from their biases; orientation biases are spread over [-2, 2] across heads (heads
start with different preferred directions), P-mode decay biases over [4, 6] (0.98-0.998 per
step: every direction reaches across the image), the other transition biases over [1, 4],
source and mark biases at 0 (0.5 after the sigmoid), direct bias 1; q/k/v use torch's default
Linear init and the output projection a small normal init (std sqrt(2 / (5 C))). In pLSTM2d
each of the four directions is RMS-normalised per head before they are averaged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from flashseq.kernels.plstm import functional as ops
from flashseq.kernels.plstm.gates import d_mode_2d, p_mode_2d

from . import checks

# the four image directions: flips of (X, Y) applied before and undone after the propagation
FLIPS = ((), (1,), (2,), (1, 2))


def _check_mode(mode, chirality):
    if mode not in ("P", "D"):
        raise ValueError(f"mode must be 'P' or 'D'; got {mode!r}")
    if chirality not in ("L", "R"):
        raise ValueError(f"chirality must be 'L' or 'R'; got {chirality!r}")


class _PLSTMBase(nn.Module):
    """q/k/v projections, the gate projection, per-head RMS norm and output projection."""

    gate_names: tuple = ()

    def __init__(self, d_model, num_heads, head_dim, directions, mode, chirality, norm_eps,
                 device, dtype):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.d_model = checks.check_int("d_model", d_model, 1)
        self.num_heads = checks.check_int("num_heads", num_heads, 1)
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by num_heads "
                                 f"({num_heads}) "
                                 "unless head_dim is given")
            head_dim = d_model // num_heads
        self.head_dim = checks.check_int("head_dim", head_dim, 1)
        _check_mode(mode, chirality)
        self.mode, self.chirality, self.directions = mode, chirality, directions
        self.norm_eps = float(norm_eps)
        H, D = self.num_heads, self.head_dim
        self.q_proj = nn.Linear(d_model, H * D, bias=False, **factory)
        self.k_proj = nn.Linear(d_model, H * D, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, H * D, bias=False, **factory)
        self.gate_proj = nn.Linear(d_model, len(self.gate_names) * directions * H, **factory)
        self.norm_weight = nn.Parameter(torch.ones(D, **factory))
        self.o_proj = nn.Linear(H * D, d_model, bias=False, **factory)
        self.reset_parameters()

    def _gate_bias(self, name: str) -> torch.Tensor:
        H = self.num_heads
        if name == "orientation":
            return torch.linspace(-2.0, 2.0, H)
        if name == "decay":
            # P-mode: the orientation already spreads the heads; every head keeps long memory
            # (sigmoid(4) = 0.982 per step) so a source still reaches across a grid of 16+ nodes
            # (the image at twice the training size, too)
            return torch.linspace(4.0, 6.0, H)
        if name in ("transition", "straight_r", "straight_d", "turn"):
            return torch.linspace(1.0, 4.0, H)
        if name == "direct":
            return torch.ones(H)
        return torch.zeros(H)

    def reset_parameters(self):
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj.reset_parameters()
        with torch.no_grad():
            self.gate_proj.weight.zero_()
            bias = torch.stack([self._gate_bias(n) for n in self.gate_names])       # [G, H]
            bias = bias[:, None, :].expand(-1, self.directions, -1).reshape(-1)
            self.gate_proj.bias.copy_(bias)
            self.norm_weight.fill_(1.0)
            nn.init.normal_(self.o_proj.weight, std=math.sqrt(2.0 / (5.0 * self.d_model)))

    def _project(self, x):
        """x [..., C] -> q, k, v [..., H, D] and gates {name: [..., directions * H]} (float32+)."""
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).unflatten(-1, (H, D))
        k = self.k_proj(x).unflatten(-1, (H, D))
        v = self.v_proj(x).unflatten(-1, (H, D))
        pre = self.gate_proj(x)
        pre = pre if pre.dtype == torch.float64 else pre.float()
        pre = pre.unflatten(-1, (len(self.gate_names), self.directions * H))
        return q, k, v, dict(zip(self.gate_names, pre.unbind(-2)))

    def _rms(self, o):
        """RMS norm over the last dimension (float32+, no weight)."""
        o32 = o if o.dtype == torch.float64 else o.float()
        return o32 * torch.rsqrt(o32.pow(2).mean(-1, keepdim=True) + self.norm_eps)

    def _finish(self, o, normalised=False):
        """o [..., H, D] -> RMS norm per head (unless ``normalised``), weight -> [..., C]."""
        o32 = o if normalised else self._rms(o)
        o = (o32 * self.norm_weight.to(o32.dtype)).to(self.o_proj.weight.dtype)
        return self.o_proj(o.flatten(-2))

    def extra_repr(self):
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"mode={self.mode!r}"
                + (f", chirality={self.chirality!r}" if self.mode == "D" else ""))


class pLSTM1d(_PLSTMBase):
    """pLSTM over sequences: ``x [B, T, d_model] -> y [B, T, d_model]`` (causal, one direction).

    Args:
        d_model: channels C. num_heads: heads H (default 4). head_dim: per-head q/k/v size
            (default C // H). mode: "P" (sigmoid transition) or "D" (tanh transition).
        norm_eps: of the per-head RMS norm. chunk: chunk of the parallel form (None: planned).
    """

    gate_names = ("source", "transition", "mark", "direct")

    def __init__(self, d_model, num_heads=4, head_dim=None, mode="P", norm_eps=1e-6, chunk=None,
                 device=None, dtype=None):
        self.chunk = chunk
        super().__init__(d_model, num_heads, head_dim, 1, mode, "L", norm_eps, device, dtype)

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, T, {self.d_model}]; got {got}")
        q, k, v, g = self._project(x)
        trans = torch.sigmoid(g["transition"]) if self.mode == "P" else torch.tanh(g["transition"])
        o = ops.plstm_1d(q, k, v, torch.sigmoid(g["source"]), trans, torch.sigmoid(g["mark"]),
                         g["direct"], chunk=self.chunk)
        return self._finish(o)


class pLSTM2d(_PLSTMBase):
    """pLSTM over images: ``x [B, X, Y, d_model] -> y [B, X, Y, d_model]``, four directions
    (the grid and its flips along X, Y and both) with their own gates, averaged.

    Args:
        d_model: channels C. num_heads: heads H (default 4). head_dim: per-head q/k/v size
            (default C // H). mode: "P" or "D" (see the module docstring). chirality: D-mode's
            kept turn, "L" or "R". norm_eps: of the per-head RMS norm. tile: (BX, BY) of the
            parallel form (None: planned).
    """

    def __init__(self, d_model, num_heads=4, head_dim=None, mode="P", chirality="L", norm_eps=1e-6,
                 tile=None, device=None, dtype=None):
        _check_mode(mode, chirality)
        self.gate_names = (("orientation", "decay", "source", "mark", "direct") if mode == "P" else
                           ("straight_r", "straight_d", "turn", "source_r", "source_d", "mark_l",
                            "mark_u", "direct"))
        self.tile = tile
        super().__init__(d_model, num_heads, head_dim, len(FLIPS), mode, chirality, norm_eps,
                         device, dtype)

    def _gates(self, g):
        """Gate pre-activations [B, X, Y, 4H] -> (source, transition, mark, direct) in
        ``plstm_2d``'s layout with 4H heads."""
        if self.mode == "P":
            orient = torch.sigmoid(g["orientation"])
            transition = p_mode_2d(orient, torch.sigmoid(g["decay"]))
            s = torch.sigmoid(g["source"])
            source = torch.stack([s * orient, s * (1 - orient)], dim=-1)
            m = torch.sigmoid(g["mark"])
            mark = torch.stack([m, m], dim=-1)
        else:
            transition = d_mode_2d(g["straight_r"], g["straight_d"], g["turn"], self.chirality)
            source = torch.sigmoid(torch.stack([g["source_r"], g["source_d"]], dim=-1))
            mark = torch.sigmoid(torch.stack([g["mark_l"], g["mark_u"]], dim=-1))
        return source, transition, mark, g["direct"]

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, X, Y, {self.d_model}]; got {got}")
        H = self.num_heads
        q, k, v, g = self._project(x)
        source, transition, mark, direct = self._gates(g)

        def per_direction(t):
            # [B, X, Y, 4H, ...] (gates) or [B, X, Y, H, ...] (q, k, v): flip direction i's heads
            parts = t.split(H, dim=3) if t.shape[3] == len(FLIPS) * H else [t] * len(FLIPS)
            return torch.cat([p.flip(f) if f else p for p, f in zip(parts, FLIPS)], dim=3)

        o = ops.plstm_2d(per_direction(q), per_direction(k), per_direction(v),
                         per_direction(source),
                         per_direction(transition), per_direction(mark), per_direction(direct),
                         tile=self.tile)
        # each direction is normalised on its own before they are averaged (as the reference
        # implementation): otherwise the direction whose quadrant holds the most state drowns the
        # others, and a node near an edge hears almost only one direction
        o = self._rms(o.unflatten(3, (len(FLIPS), H)))
        o = torch.stack([o[:, :, :, i].flip(f) if f else o[:, :, :, i]
                         for i, f in enumerate(FLIPS)]).mean(0)
        return self._finish(o, normalised=True)
