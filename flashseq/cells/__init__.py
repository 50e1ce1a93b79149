"""Registry of recurrent cells. Adding a cell: one file here, one line in ``CELLS``."""
from .base import Cell
from .elman import ELMAN
from .gru import GRU
from .lstm import LSTM
from .slstm import SLSTM

CELLS: dict[str, Cell] = {c.name: c for c in (LSTM, GRU, SLSTM, ELMAN)}


def get_cell(name) -> Cell:
    """The registered cell called ``name``; ``ValueError`` listing the known cells otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"cell must be a str, one of {sorted(CELLS)}; got {type(name).__name__}")
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"cell={name!r} is not a known cell; allowed: {sorted(CELLS)}") from None


__all__ = ["Cell", "CELLS", "get_cell"]
