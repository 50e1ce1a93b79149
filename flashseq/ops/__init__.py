"""Public functional ops (see API.md). Layouts: ``fused_rnn``'s docstring."""
from flashseq.kernels.fused_rnn import available_backends, fused_rnn

__all__ = ["fused_rnn", "available_backends"]
