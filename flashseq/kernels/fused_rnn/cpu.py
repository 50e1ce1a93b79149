"""``backend="cpu"``: the compiled C++ loop of csrc/cpu/ (being written)."""


def unavailable_reason(device):
    if device.type != "cpu":
        return f"the compiled CPU loop runs on CPU tensors only, not {device.type}"
    return "the compiled CPU extension is not built yet"


def unsupported_reason(problem):
    return None


def fused_rnn(wx, r, b, states, *, cell, lengths):
    raise NotImplementedError(unavailable_reason(wx.device))
