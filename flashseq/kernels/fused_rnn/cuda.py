"""``backend="cuda"``: persistent CUDA kernels (not built yet: a later issue)."""


def unavailable_reason(device):
    # TODO(cuda-fused): the persistent CUDA kernels are a later issue.
    return "the CUDA persistent kernels are not part of this build yet"


def unsupported_reason(problem):
    return unavailable_reason(problem.device)


def fused_rnn(wx, r, b, states, *, cell, lengths):
    raise NotImplementedError(unavailable_reason(wx.device))
