"""Modules: torch-compatible LSTM/GRU/RNN twins, head-wise LSTM, sLSTM, LayerNorm LSTM/GRU and
``convert``.

Importing this package (``import flashseq`` does) registers the module classes as torch.load
safe globals, so a whole model saved with ``torch.save(model)`` loads with ``weights_only=True``
(torch's default) without listing them in ``torch.serialization.safe_globals``.
"""
import torch

from .convert import convert
from .errors import RNNInputError, RNNInputTypeError
from .gru import GRU
from .layernorm_rnn import LayerNormGRU, LayerNormLSTM
from .linear_attention import DeltaNet, GatedLinearAttention, mLSTMLayer
from .lstm import LSTM
from .plstm import pLSTM1d, pLSTM2d
from .rnn import RNN
from .slstm import sLSTM

torch.serialization.add_safe_globals([LSTM, GRU, RNN, sLSTM, LayerNormLSTM, LayerNormGRU])

__all__ = ["LSTM", "GRU", "RNN", "sLSTM", "convert", "RNNInputError", "RNNInputTypeError",
           "GatedLinearAttention",
           "DeltaNet", "mLSTMLayer", "pLSTM1d", "pLSTM2d", "LayerNormLSTM", "LayerNormGRU"]
