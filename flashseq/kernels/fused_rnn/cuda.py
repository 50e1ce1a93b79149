"""``backend="cuda"``: persistent CUDA kernels from csrc/fused/ (not built yet)."""


def unavailable_reason(device):
    # TODO(cuda-fused): the csrc/fused/ persistent kernels are a later issue.
    return "the CUDA persistent kernels (csrc/fused/) are not part of this build yet"


def unsupported_reason(problem):
    return unavailable_reason(problem.device)


def fused_rnn(wx, r, b, states, *, cell, lengths):
    raise NotImplementedError(unavailable_reason(wx.device))
