"""``backend="triton"``: persistent Triton kernels (being written)."""


def unavailable_reason(device):
    return "the Triton fused kernels are not written yet"


def unsupported_reason(problem):
    return None


def fused_rnn(wx, r, b, states, *, cell, lengths):
    raise NotImplementedError(unavailable_reason(wx.device))
