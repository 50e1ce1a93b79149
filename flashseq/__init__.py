"""flashseq: fused recurrent kernels for PyTorch.

``flashseq.ops.fused_rnn`` is the functional entry point; the modules in ``flashseq.nn``
(``LSTM``, ``GRU``, ``RNN``, ``sLSTM``) are drop-in twins of torch's: ``flashseq.LSTM``, ``GRU``
and ``RNN`` subclass ``torch.nn.LSTM``, ``GRU`` and ``RNN``. Importing flashseq registers the
module classes as ``torch.load`` safe globals (see ``flashseq.nn``).
"""
from . import cells, nn, ops
from .nn import (GRU, LSTM, RNN, DeltaNet, GatedLinearAttention, LayerNormGRU, LayerNormLSTM,
                 convert, mLSTMLayer, pLSTM1d, pLSTM2d, sLSTM)

__version__ = "0.1.0"

__all__ = ["cells", "ops", "nn", "LSTM", "GRU", "RNN", "sLSTM", "convert", "GatedLinearAttention",
           "DeltaNet", "mLSTMLayer", "pLSTM1d", "pLSTM2d", "LayerNormLSTM", "LayerNormGRU",
           "__version__"]
