"""Modules: torch-compatible LSTM/GRU/RNN twins, head-wise LSTM, sLSTM and ``convert``."""
from .convert import convert
from .errors import RNNInputError
from .gru import GRU
from .linear_attention import DeltaNet, GatedLinearAttention, mLSTMLayer
from .lstm import LSTM
from .rnn import RNN
from .slstm import sLSTM

__all__ = ["LSTM", "GRU", "RNN", "sLSTM", "convert", "RNNInputError", "GatedLinearAttention",
           "DeltaNet", "mLSTMLayer"]
