"""flashseq.convert: swap torch.nn.LSTM/GRU/RNN inside a model for their flashseq twins."""
from __future__ import annotations

import warnings

from torch import nn

from .checks import check_backend
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

_TWINS = ((nn.LSTM, LSTM), (nn.GRU, GRU), (nn.RNN, RNN))


def _twin_of(module: nn.Module, backend: str):
    """The flashseq twin of a torch RNN module, holding the very same Parameter objects."""
    for torch_cls, twin_cls in _TWINS:
        if type(module) is torch_cls:
            break
    else:
        return None
    kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  dropout=module.dropout, bidirectional=bool(module.bidirectional), backend=backend)
    if torch_cls is nn.LSTM:
        kwargs["proj_size"] = module.proj_size
    if torch_cls is nn.RNN:
        kwargs["nonlinearity"] = module.nonlinearity
    # built on the meta device so no memory is allocated for parameters that are replaced next;
    # torch already warned about this configuration (dropout with one layer) when it was built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = twin_cls(module.input_size, module.hidden_size, device="meta", **kwargs)
    for name in twin._flat_weights_names:
        setattr(twin, name, getattr(module, name))
    twin._init_flat_weights()  # RNNBase's weak references, to the shared Parameters now
    twin.train(module.training)
    return twin


def convert(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every ``torch.nn.LSTM``/``GRU``/``RNN`` inside ``module`` by the
    flashseq twin that shares its Parameter objects (same tensors: optimisers, tied weights and
    state_dict keys are unaffected), and return ``module``.

    Only exact instances of the torch classes are replaced (a user subclass may override
    forward, so it is left alone). If ``module`` itself is a torch RNN module it cannot be
    replaced inside a parent, so its twin is returned instead. Hooks registered on a replaced
    module are not carried over.

    Args:
        module: any nn.Module.
        backend: fused_rnn back end for the new modules. Default: "auto".

    Returns:
        ``module`` (or the twin, when ``module`` is itself a torch RNN module).
    """
    check_backend(backend)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
    root_twin = _twin_of(module, backend)
    if root_twin is not None:
        return root_twin
    twins = {}  # id(torch module) -> twin, so a module shared by two parents stays shared
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in twins:
                twins[id(child)] = _twin_of(child, backend)
            if twins[id(child)] is not None:
                setattr(parent, name, twins[id(child)])
    return module


__all__ = ["convert"]
