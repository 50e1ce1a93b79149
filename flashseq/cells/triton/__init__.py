"""Triton pointwise functions of every cell, keyed by cell name (imports triton: load lazily).

Each cell has ``<cell>_fwd`` and ``<cell>_bwd`` with a fixed slot signature so that one kernel
serves every cell (G <= 4 gates, S <= 4 states; unused slots are passed through unchanged):

``fwd(wx0..wx3, rh0..rh3, s0..s3) -> (s0'..s3')``
    gate inputs wx_g and rh_g = h_prev @ r_g + b_g, previous states s_k, new states s_k'.
``bwd(wx0..wx3, rh0..rh3, s0..s3, d0..d3) -> (dwx0..dwx3, drh0..drh3, dp0..dp3)``
    from d loss / d s_k', the gradients of wx_g, rh_g and the previous states, except the
    h_prev -> h_prev @ r path, which the kernel adds.

All blocks are fp32 [BB, BH]. Adding a cell: one file here and one entry in ``TRITON_CELLS``.
"""
from dataclasses import dataclass

from triton.runtime.jit import JITFunction

from .elman import elman_bwd, elman_fwd
from .gru import gru_bwd, gru_fwd
from .lstm import lstm_bwd, lstm_fwd
from .slstm import slstm_bwd, slstm_fwd

MAX_GATES = 4
MAX_STATES = 4


@dataclass(frozen=True)
class TritonCell:
    """The Triton pointwise functions of one cell.

    ``rh_grad_differs``: d rh_g != d wx_g for some gate (GRU's n gate), so the backward kernel
    must store d rh separately for the d r / d b reduction.
    """

    fwd: JITFunction
    bwd: JITFunction
    rh_grad_differs: bool = False


TRITON_CELLS = {
    "lstm": TritonCell(lstm_fwd, lstm_bwd),
    "gru": TritonCell(gru_fwd, gru_bwd, rh_grad_differs=True),
    "slstm": TritonCell(slstm_fwd, slstm_bwd),
    "elman": TritonCell(elman_fwd, elman_bwd),
}


def get_triton_cell(name: str) -> TritonCell:
    """The Triton functions of the registered cell ``name``; ``ValueError`` if it has none."""
    try:
        return TRITON_CELLS[name]
    except KeyError:
        raise ValueError(f"cell={name!r} has no Triton functions; "
                         f"allowed: {sorted(TRITON_CELLS)}") from None


__all__ = ["TritonCell", "TRITON_CELLS", "get_triton_cell", "MAX_GATES", "MAX_STATES"]
