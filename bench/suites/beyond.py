"""Suite "beyond": the options beyond torch.nn, fused, against the Python loop a user writes
without them.

For each feature the fused call is what a flashseq user writes: a module with the option, in
training mode, ``backend="auto"`` (``flashseq.LSTM(..., dropconnect=p)``, ``m(x, reset=r)``,
``flashseq.LayerNormLSTM``, ...), or for ``return_all_states`` (which the modules do not
return) the input projection plus ``flashseq.ops.fused_rnn(..., return_all_states=True)``. The
baseline is the loop over time steps a torch user writes for the same math, every step one
``torch.lstm_cell`` (the op ``torch.nn.LSTMCell.forward`` runs) on the module's parameters:

- dropconnect p: ``weight_hh`` times one Bernoulli mask (scaled by 1/(1-p)) drawn per call;
- dropconnect_nn_lstm: the same fused call against the other thing a user can write for
  dropconnect, AWD-LSTM's weight drop: ``torch.nn.LSTM`` (oneDNN's fused layer on the CPU) run
  by ``torch.func.functional_call`` with the masked ``weight_hh_l0`` (not a loop);
- variational p: ``h_{t-1} * mask`` entering the cell, one mask per row and call;
- zoneout (p_h, p_c): after each step ``torch.where(keep, previous, new)`` for h and c;
- reset: before each step ``torch.where(reset[:, t], h0, h)`` (and c); reset flags random,
  1 in ``RESET_EVERY`` steps per row;
- return_all_states: the loop stacks every step's h and c;
- layernorm_lstm / layernorm_gru: the LayerNorm cell written with ``F.layer_norm`` and
  ``F.linear`` per step (no learnable gain: the placement of flashseq/cells/layernorm_lstm.py
  and layernorm_gru.py).

The masks of both sides are drawn inside the timed call (a fresh draw per forward, as in
training). Before timing, each feature's fused call is checked against its loop fed the same
masks (reconstructed from the generator in fused_rnn's documented draw order,
flashseq/kernels/fused_rnn/extras.py): forward and the gradients of x and every parameter,
float32, relative error <= 1e-5, else nothing is timed (CorrectnessError).

Modes "fwd" (under ``torch.no_grad()``) and "fwd+bwd" (gradients of x and every parameter for
a fixed random upstream gradient of the output, and of all states for return_all_states).
Paired ratios (``bench.timing.measure_ratio``, the two calls alternated, median of per-pair
ratios; on the CPU timed in this process's CPU time, meaningful at one thread, the suite's
default). CPU: B=16, T=64, input and hidden 128, float32; CUDA: B=64, T=256, 256, float32.
Columns: "ratio" fused / loop (below 1: fused faster), "speedup" its inverse, "loop_ms", the
back end fused_rnn's "auto" chose ("backend"), "load1" the 1-minute load average at the start.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F

from bench import timing
from bench.suites import CorrectnessError

DESCRIPTION = ("Beyond torch.nn: dropconnect, variational dropout, zoneout, reset, "
               "return_all_states, LayerNorm LSTM/GRU fused (flashseq modules / fused_rnn, "
               "backend auto, training mode) vs the Python torch.lstm_cell / F.layer_norm loop "
               "with the same math; paired ratios, fwd and fwd+bwd, float32.")
DEFAULT_CPU_THREADS = 1

FEATURES = ("dropconnect", "dropconnect_nn_lstm", "variational", "zoneout", "reset",
            "return_all_states", "layernorm_lstm", "layernorm_gru")
MODES = ("fwd", "fwd+bwd")
P = 0.25                  # dropconnect and variational probability
ZONEOUT = (0.15, 0.05)    # (p_h, p_c)
RESET_EVERY = 16          # mean steps between resets of a row
CPU = dict(B=16, T=64, I=128, H=128)
CUDA = dict(B=64, T=256, I=256, H=256)
QUICK = dict(B=2, T=5, I=4, H=8)
SMOKE = dict(B=3, T=9, I=5, H=16)
MIN_RUN_TIME_S = 3.0
TOLERANCE = 1e-5


# ------------------------------------------------------------------ the user's loops
def lstm_loop(x, w_ih, w_hh, b_ih, b_hh, *, w_mask=None, h_mask=None, zone=None, reset=None,
              all_states=False):
    """torch.lstm_cell over x [T, B, I] from zero states; returns h [T, B, H] (and the states
    [T, 2, B, H] with ``all_states``). w_mask [4H, H] multiplies weight_hh, h_mask [B, H] the
    h entering the cell; zone [T, 2, B, H] bool keeps the previous h / c; reset [B, T] bool
    returns the states to zero before step t."""
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    h0 = x.new_zeros(B, H)
    h, c = h0, h0
    w = w_hh * w_mask if w_mask is not None else w_hh
    hs, cs = [], []
    for t in range(T):
        if reset is not None:
            keep = reset[:, t, None]
            h, c = torch.where(keep, h0, h), torch.where(keep, h0, c)
        h_in = h * h_mask if h_mask is not None else h
        h_new, c_new = torch.lstm_cell(x[t], (h_in, c), w_ih, w, b_ih, b_hh)
        if zone is not None:
            h_new, c_new = torch.where(zone[t, 0], h, h_new), torch.where(zone[t, 1], c, c_new)
        h, c = h_new, c_new
        hs.append(h)
        cs.append(c)
    out = torch.stack(hs)
    return (out, torch.stack([out, torch.stack(cs)], 1)) if all_states else out


def layernorm_lstm_loop(x, w_ih, w_hh, b_ih, b_hh):
    """The LayerNorm LSTM written per step: pre = LN(x W_ih^T + b_ih) + LN(h W_hh^T) + b_hh,
    h = sigmoid(o) tanh(LN(c)); x [T, B, I] -> h [T, B, H]."""
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    h = c = x.new_zeros(B, H)
    hs = []
    for t in range(T):
        pre = (F.layer_norm(F.linear(x[t], w_ih, b_ih), (4 * H,))
               + F.layer_norm(F.linear(h, w_hh), (4 * H,)) + b_hh)
        i, f, g, o = pre.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,)))
        hs.append(h)
    return torch.stack(hs)


def layernorm_gru_loop(x, w_ih, w_hh, b_ih, b_hh):
    """The LayerNorm GRU per step: a = LN(x W_ih^T + b_ih), u = LN(h W_hh^T) + b_hh,
    r, z = sigmoid(a + u), n = tanh(a_n + r u_n), h = (1 - z) n + z h."""
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    h = x.new_zeros(B, H)
    hs = []
    for t in range(T):
        a = F.layer_norm(F.linear(x[t], w_ih, b_ih), (3 * H,))
        u = F.layer_norm(F.linear(h, w_hh), (3 * H,)) + b_hh
        r = torch.sigmoid(a[:, :H] + u[:, :H])
        z = torch.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
        n = torch.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
        h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs)


# ------------------------------------------------------------------ the two sides of a case
def make_module(feature, I, H, device):
    import flashseq
    if feature == "layernorm_lstm":
        return flashseq.LayerNormLSTM(I, H, device=device)
    if feature == "layernorm_gru":
        return flashseq.LayerNormGRU(I, H, device=device)
    options = {"dropconnect": dict(dropconnect=P), "dropconnect_nn_lstm": dict(dropconnect=P),
               "variational": dict(variational_dropout=P),
               "zoneout": dict(zoneout=ZONEOUT)}.get(feature, {})
    return flashseq.LSTM(I, H, device=device, **options)


def make_reset(B, T, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, generator=gen) < 1.0 / RESET_EVERY).to(device)


def fused_call(feature, module, x, reset, generator=None):
    """The flashseq side: returns the tensors the backward differentiates."""
    if feature == "return_all_states":
        from flashseq.ops import fused_rnn
        T, B = x.shape[:2]
        H = module.hidden_size
        wx = F.linear(x.transpose(0, 1), module.weight_ih_l0, module.bias_ih_l0)
        r = module.weight_hh_l0.view(4, H, H).transpose(1, 2).unsqueeze(1)
        h, _, states = fused_rnn(wx.view(B, T, 4, 1, H), r, module.bias_hh_l0.view(4, 1, H),
                                 cell="lstm", return_all_states=True)
        return h.view(B, T, H).transpose(0, 1), states.view(T, 2, B, H)
    if feature == "reset":
        return (module(x, reset=reset)[0],)
    return (module(x, generator=generator)[0],)


def loop_masks(feature, B, T, H, device, generator=None):
    """The baseline's masks for ``feature``: drawn fresh (generator None) or, from a
    generator, as fused_rnn draws them (its order and layouts: r [4, 1, H, H] = W_hh^T per
    gate, variational [B, 1, H], zoneout [T, 2, B, 1, H])."""
    def rand(*shape):
        return torch.rand(shape, device=device, generator=generator)

    if feature in ("dropconnect", "dropconnect_nn_lstm"):
        keep = rand(4, 1, H, H) >= P  # r's layout: r[g, 0] = W_g^T
        return dict(w_mask=keep[:, 0].transpose(1, 2).reshape(4 * H, H).float() / (1 - P))
    if feature == "variational":
        return dict(h_mask=(rand(B, 1, H) >= P).view(B, H).float() / (1 - P))
    if feature == "zoneout":
        p = torch.tensor(ZONEOUT, device=device).view(1, 2, 1, 1, 1)
        return dict(zone=(rand(T, 2, B, 1, H) < p).view(T, 2, B, H))
    return {}


def loop_call(feature, module, x, reset, generator=None):
    """The user's loop on the module's parameters, masks drawn inside (see loop_masks)."""
    params = (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0)
    if feature == "layernorm_lstm":
        return (layernorm_lstm_loop(x, *params),)
    if feature == "layernorm_gru":
        return (layernorm_gru_loop(x, *params),)
    T, B = x.shape[:2]
    masks = loop_masks(feature, B, T, module.hidden_size, x.device, generator)
    if feature == "return_all_states":
        return lstm_loop(x, *params, all_states=True)
    if feature == "dropconnect_nn_lstm":
        weights = {"weight_hh_l0": module.weight_hh_l0 * masks["w_mask"]}
        return (torch.func.functional_call(torch_twin(module), weights, (x,))[0],)
    if feature == "reset":
        return (lstm_loop(x, *params, reset=reset),)
    return (lstm_loop(x, *params, **masks),)


def torch_twin(module):
    """A torch.nn.LSTM holding ``module``'s Parameter objects (gradients reach them), made
    once per module."""
    twin = getattr(module, "_bench_torch_twin", None)
    if twin is None:
        twin = torch.nn.LSTM(module.input_size, module.hidden_size, device=module.weight_ih_l0.device)
        for name in module._flat_weights_names:
            setattr(twin, name, getattr(module, name))
        object.__setattr__(module, "_bench_torch_twin", twin)  # not a submodule
    return twin


@contextlib.contextmanager
def recorded_backends():
    """The back ends fused_rnn's dispatch chose inside the block, in call order."""
    from flashseq.kernels.fused_rnn import backends
    names, choose_name = [], backends.choose_name

    def recording(backend, problem):
        name = choose_name(backend, problem)
        names.append(name)
        return name

    backends.choose_name = recording
    try:
        yield names
    finally:
        backends.choose_name = choose_name


def _setup(feature, dims, device, seed):
    torch.manual_seed(seed)
    module = make_module(feature, dims["I"], dims["H"], device).train()
    x = torch.randn(dims["T"], dims["B"], dims["I"], device=device, requires_grad=True)
    reset = make_reset(dims["B"], dims["T"], device, seed)
    return module, x, reset


def _outputs_and_grads(call, feature, module, x, reset, generator, upstream):
    outs = call(feature, module, x, reset, generator)
    leaves = [x, *module.parameters()]
    grads = torch.autograd.grad(outs, leaves, upstream(outs))
    return [o.detach() for o in outs] + list(grads)


def check_feature(feature, device) -> str | None:
    """None when the fused call matches the loop fed the same masks (forward and every
    gradient, float32); otherwise why not."""
    module, x, reset = _setup(feature, SMOKE, device, seed=1)
    if feature == "reset":
        reset = torch.zeros_like(reset)
        reset[:, SMOKE["T"] // 2] = True
        reset[0, 2] = True
    up = {}

    def upstream(outs):
        return up.setdefault(len(outs), [torch.randn_like(o) for o in outs])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto's fallback notice
        ours = _outputs_and_grads(fused_call, feature, module, x, reset,
                                  torch.Generator(device=device).manual_seed(3), upstream)
    theirs = _outputs_and_grads(loop_call, feature, module, x, reset,
                                torch.Generator(device=device).manual_seed(3), upstream)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = float((a - b).norm() / b.norm().clamp_min(1e-30))
        if not err <= TOLERANCE:
            return (f"{feature}: tensor {i} (outputs, then gradients of x and the parameters) "
                    f"relative error {err:.2e} > {TOLERANCE}")
    return None


def _timed(call, feature, module, x, reset, mode, upstream):
    leaves = [x, *module.parameters()]

    def fwd():
        with torch.no_grad():
            return call(feature, module, x, reset)

    def fwd_bwd():
        outs = call(feature, module, x, reset)
        return torch.autograd.grad(outs, leaves, upstream[:len(outs)])

    return fwd if mode == "fwd" else fwd_bwd


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def case_row(feature, mode, dims, device, min_run_time) -> dict:
    module, x, reset = _setup(feature, dims, device, seed=0)
    T, B, H = dims["T"], dims["B"], dims["H"]
    upstream = [torch.randn(T, B, H, device=device), torch.randn(T, 2, B, H, device=device)]
    case = f"{feature} B={B} T={T} I={dims['I']} H={H} {mode}"
    row = {"case": case, "provider": "flashseq fused (auto)", "feature": feature, "mode": mode,
           "load1": load_average()}
    with warnings.catch_warnings(record=True) as caught, recorded_backends() as names:
        warnings.simplefilter("always")
        with torch.no_grad():
            fused_call(feature, module, x, reset)
    fallback = [str(w.message) for w in caught if "falling back" in str(w.message)]
    row["backend"] = "+".join(sorted(set(names))) or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = timing.measure_ratio(_timed(fused_call, feature, module, x, reset, mode, upstream),
                                     _timed(loop_call, feature, module, x, reset, mode, upstream),
                                     device=device, min_run_time=min_run_time,
                                     cpu_time=torch.device(device).type == "cpu")
    except Exception as err:  # one failing case is reported in its row, the others still run
        return {**row, "median_ms": None, "min_ms": None, "iqr_ms": None,
                "status": f"failed: {type(err).__name__}: {err}"}
    return {**row, "median_ms": r["fn_ms"], "min_ms": None, "iqr_ms": None,
            "loop_ms": r["baseline_ms"], "ratio": r["ratio"], "speedup": 1.0 / r["ratio"],
            "paired_iqr": r["ratio_iqr"], "pairs": r["pairs"],
            "fallback": fallback[0] if fallback else None, "status": "ok"}


def run(device, quick: bool, progress) -> list[dict]:
    """Rows for every (feature, mode); workloads in the module docstring."""
    device = torch.device(device)
    wrong = [msg for msg in (check_feature(f, device) for f in FEATURES) if msg]
    if wrong:  # never time a wrong call
        raise CorrectnessError("; ".join(wrong))
    dims = QUICK if quick else (CUDA if device.type == "cuda" else CPU)
    min_run_time = 0.05 if quick else MIN_RUN_TIME_S
    work = [(f, m) for f in FEATURES for m in MODES]
    return [case_row(f, m, dims, device, min_run_time) for f, m in progress(work)]


def summary(rows) -> list[str]:
    """Which back end served each feature (fused_rnn's "auto")."""
    served = {}
    for r in rows:
        served.setdefault(r.get("feature"), r.get("backend"))
    return ["back end chosen by fused_rnn's auto: "
            + ", ".join(f"{f} -> {b}" for f, b in served.items())]
