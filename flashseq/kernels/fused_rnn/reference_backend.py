"""``backend="reference"``: the step-by-step PyTorch loop, on any device and dtype."""
from .reference import fused_rnn_reference as fused_rnn  # noqa: F401


def unavailable_reason(device):
    return None


def unsupported_reason(problem):
    return None
