"""The cell description every kernel back end and test iterates over."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# step(wx_t, rh_t, states) -> new states
#   wx_t   [B, G, NH, DH]  input projection of this step (input bias included)
#   rh_t   [B, G, NH, DH]  h_prev @ r + b, per gate
#   states sequence of S tensors [B, NH, DH] in the cell's state order (h first)
# returns a tuple of S tensors [B, NH, DH]; the first one is the step's output h.
StepFn = Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], tuple]

# partials(wx_t, rh_t, states) -> (new_states, d_wx, d_rh, d_states), the step's analytic local
# derivatives (used by the parallel-in-time Newton solver, flashseq/kernels/parallel_rnn):
#   new_states tuple of S tensors [B, NH, DH], exactly ``step``'s results
#   d_wx       [B, S, G, NH, DH]  d new_state[s] / d wx_t[g] (each unit sees only its own gates)
#   d_rh       [B, S, G, NH, DH]  d new_state[s] / d rh_t[g]
#   d_states   [B, S, S, NH, DH]  d new_state[s] / d state[s'] at fixed rh_t (the direct path;
#              the path through rh_t = h_prev @ r + b is d_rh composed with r)
PartialsFn = Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], tuple]


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: its gate and state layout and its reference pointwise step.

    ``gate_names`` fixes the order of the G axis of ``wx``, ``r`` and ``b``;
    ``state_names`` fixes the order of the S axis of ``states`` (always ``h`` first).
    ``step`` is plain PyTorch, differentiable, and exact in float64: it is the ground truth
    that every kernel's pointwise math is tested against.
    """

    name: str
    gate_names: tuple[str, ...]
    state_names: tuple[str, ...]
    step: StepFn
    doc: str = ""
    partials: PartialsFn | None = None  # None: the cell has no analytic Jacobian (yet)

    @property
    def num_gates(self) -> int:
        return len(self.gate_names)

    @property
    def num_states(self) -> int:
        return len(self.state_names)

    def __post_init__(self):
        if self.state_names[0] != "h":
            raise ValueError(f"cell {self.name!r}: the first state must be 'h', got {self.state_names}")
