"""Registry of recurrent cells. Adding a cell: one file here, one line in ``CELLS``.

``CELLS`` holds the cells every ``fused_rnn`` back end serves; ``REFERENCE_CELLS`` the LayerNorm
cells, served by the back ends that declare ``SERVES_EXTRAS`` (reference, cpu, triton; not yet
the CUDA kernels). ``get_cell`` finds both.
"""
from .base import Cell
from .elman import ELMAN
from .gru import GRU
from .layernorm_gru import LAYERNORM_GRU
from .layernorm_lstm import LAYERNORM_LSTM
from .lstm import LSTM
from .slstm import SLSTM

CELLS: dict[str, Cell] = {c.name: c for c in (LSTM, GRU, SLSTM, ELMAN)}
REFERENCE_CELLS: dict[str, Cell] = {c.name: c for c in (LAYERNORM_LSTM, LAYERNORM_GRU)}


def get_cell(name) -> Cell:
    """The registered cell called ``name``; ``ValueError`` listing the known cells otherwise."""
    known = sorted([*CELLS, *REFERENCE_CELLS])
    if not isinstance(name, str):
        raise TypeError(f"cell must be a str, one of {known}; got {type(name).__name__}")
    cell = CELLS.get(name) or REFERENCE_CELLS.get(name)
    if cell is None:
        raise ValueError(f"cell={name!r} is not a known cell; allowed: {known}")
    return cell


__all__ = ["Cell", "CELLS", "REFERENCE_CELLS", "get_cell"]
