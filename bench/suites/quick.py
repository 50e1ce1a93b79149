"""Suite "quick" (``python -m bench quick``): one small LSTM workload on whatever device is here,
every flashseq.ops.fused_rnn back end against torch.nn.LSTM, forward and forward+backward.

Back ends that cannot run here are listed as skipped; one that fails its smoke check against
the float64 reference is listed as failed and never timed.
"""
from __future__ import annotations

import torch

from bench import runner, smoke
from bench.rnn_workloads import MODES, LSTMWorkload, fused_rnn_call, make_tensors, torch_lstm_call
from bench.suites import CorrectnessError
from bench.suites.fused_rnn import BASELINE, backend_status
from flashseq.kernels.fused_rnn.backends import BACKEND_MODULES

DESCRIPTION = ("A small float32 LSTM (B=8, T=64, H=128) on the device at hand: every "
               "fused_rnn back end (projection GEMM included) vs torch.nn.LSTM.")

WORKLOAD = {"B": 8, "T": 64, "H": 128}
TINY_WORKLOAD = {"B": 2, "T": 8, "H": 16}


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for each back end and torch.nn.LSTM on the small workload (tiny when ``quick``)."""
    wrong = smoke.check_lstm_mapping()
    if wrong:
        raise CorrectnessError(f"the benchmark's LSTM set-up is not torch.nn.LSTM: {wrong}")
    device = torch.device(device)
    # float32 everywhere: the reference back end in bfloat16 is not accurate enough to pass
    # the smoke check, and this suite is about whether each back end runs, not peak speed.
    dtype = torch.float32
    size = TINY_WORKLOAD if quick else WORKLOAD
    providers = [runner.Provider(f"flashseq:{name}",
                                 lambda data, name=name: fused_rnn_call(*data, name),
                                 status=backend_status(name, device, dtype, NH=1))
                 for name in BACKEND_MODULES]
    providers.append(runner.Provider(BASELINE, lambda data: torch_lstm_call(*data), peer=True))
    rows = []
    for mode in progress(MODES):
        w = LSTMWorkload(B=size["B"], T=size["T"], I=size["H"], H=size["H"], NH=1, mode=mode,
                         dtype=dtype, device=device)
        rows += runner.time_case(w.case, (w, make_tensors(w)), providers, device=device,
                                 min_run_time=0.05 if quick else 0.3, extra={"mode": mode})
    return runner.add_ratios(rows, BASELINE)
