"""Public functional ops (documented in docs/api.md). Layouts: ``fused_rnn``'s docstring."""
from flashseq.kernels.fused_rnn import available_backends, fused_rnn
from flashseq.kernels.fused_rnn.cpu import cpu_buffer_cache_bytes, empty_cpu_buffer_cache
from flashseq.kernels.linear_scan import (chunk_delta_rule, chunk_gla, chunk_mlstm,
                                          fused_recurrent_delta_rule, fused_recurrent_gla,
                                          fused_recurrent_mlstm)
from flashseq.kernels.parallel_rnn import ParallelRNNStats, parallel_rnn
from flashseq.kernels.plstm import plstm_1d, plstm_2d, plstm_dag

__all__ = ["fused_rnn", "available_backends", "cpu_buffer_cache_bytes", "empty_cpu_buffer_cache",
           "chunk_gla", "chunk_delta_rule", "chunk_mlstm",
           "fused_recurrent_gla", "fused_recurrent_delta_rule", "fused_recurrent_mlstm",
           "plstm_1d", "plstm_2d", "plstm_dag", "parallel_rnn", "ParallelRNNStats"]
