"""A model holding flashseq modules inside DistributedDataParallel (gloo, 2 CPU processes) takes
the same SGD step as the unwrapped model on the whole batch."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import flashseq

WORLD = 2
BATCH, STEPS, VOCAB = 4, 5, 9


class TwoRNNs(nn.Module):
    """embedding -> flashseq LSTM (2 layers) -> flashseq GRU (bidirectional) -> linear."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 4)
        self.lstm = flashseq.LSTM(4, 6, 2, batch_first=True)
        self.gru = flashseq.GRU(6, 5, batch_first=True, bidirectional=True)
        self.decoder = nn.Linear(10, VOCAB)

    def forward(self, tokens):
        return self.decoder(self.gru(self.lstm(self.embedding(tokens))[0])[0])


def _model_and_data():
    torch.manual_seed(0)
    model = TwoRNNs()
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS))
    targets = torch.randint(0, VOCAB, (BATCH, STEPS))
    return model, tokens, targets


def _sgd_step(model, tokens, targets):
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    logits = model(tokens)
    # mean over this process's rows: DDP averages the two halves' gradients, i.e. the whole
    # batch's mean
    nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)).backward()
    optimiser.step()


def _worker(rank, port, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        model, tokens, targets = _model_and_data()
        ddp = nn.parallel.DistributedDataParallel(model)
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        _sgd_step(ddp, tokens[rows], targets[rows])
        results[rank] = {name: p.detach().clone() for name, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 15-40 s measured on the shared 2-core box (load average 7-10): spawning two processes that
# each import torch and flashseq; the model and batch are tiny. A process that finds the C++
# extension's sources changed builds it first (minutes, once).
@pytest.mark.filterwarnings("ignore:flashseq.ops.fused_rnn. falling back:RuntimeWarning")
def test_ddp_step_equals_the_whole_batch_step():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
    model, tokens, targets = _model_and_data()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _sgd_step(model, tokens, targets)
    for rank in range(WORLD):
        for name, p in model.named_parameters():
            step, ddp_step = p.detach() - before[name], results[rank][name] - before[name]
            err = (ddp_step - step).norm() / step.norm()
            assert err <= 1e-5, f"rank {rank} {name}: relative error of the step {err:.2e}"
