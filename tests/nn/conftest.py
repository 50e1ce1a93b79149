"""Module tests run tiny tensors: one intra-op thread avoids OpenMP spin-waiting on the shared
CPU, which made torch's own tiny ops ~10x slower (measured on the 2-core dev box under load)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
