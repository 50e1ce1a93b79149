"""The parts of torch's module contract that are not numerics: parameters, state_dict, repr,
dropout, convert, and the errors for bad arguments."""
import copy
import math
import warnings

import pytest
import torch
from torch import nn

import flashseq
from flashseq.nn import RNNInputError
from tests.nn.twins import FALLBACK_WARNING, KINDS, NOT_FUSED_WARNING

pytestmark = [pytest.mark.filterwarnings(FALLBACK_WARNING), pytest.mark.filterwarnings(NOT_FUSED_WARNING)]

CONFIGS = [
    pytest.param(kind, dict(num_layers=layers, bias=bias, bidirectional=bidir),
                 id=f"{kind}-L{layers}-{'bias' if bias else 'nobias'}-{'bi' if bidir else 'uni'}")
    for kind in KINDS for layers in (1, 2) for bias in (True, False) for bidir in (False, True)
]


@pytest.mark.parametrize("kind,kwargs", CONFIGS)
def test_parameters_state_dict_and_repr_match_torch(kind, kwargs):
    torch_cls, ours_cls, extra = KINDS[kind]
    ref = torch_cls(5, 6, **extra, **kwargs)
    ours = ours_cls(5, 6, **extra, **kwargs)
    ref_params = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == ref_params
    assert repr(ours) == repr(ref)
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    # both ways, strict
    ours.load_state_dict(ref.state_dict(), strict=True)
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    fresh = torch_cls(5, 6, **extra, **kwargs)
    fresh.load_state_dict(ours_cls(5, 6, **extra, **kwargs).state_dict(), strict=True)
    ours.flatten_parameters()


def test_positional_argument_order_matches_torch():
    # LSTM: input, hidden, layers, bias, batch_first, dropout, bidirectional, proj_size
    args = (5, 6, 2, False, True, 0.25, True, 3)
    assert repr(flashseq.LSTM(*args)) == repr(nn.LSTM(*args))
    args = (5, 6, 2, False, True, 0.25, True)
    assert repr(flashseq.GRU(*args)) == repr(nn.GRU(*args))
    # RNN: nonlinearity is the fourth positional argument
    ours, ref = flashseq.RNN(5, 6, 2, "relu", False, True), nn.RNN(5, 6, 2, "relu", False, True)
    assert repr(ours) == repr(ref) and ours.nonlinearity == ref.nonlinearity == "relu"
    m = flashseq.LSTM(5, 6, device="cpu", dtype=torch.float64, backend="reference")
    assert m.weight_hh_l0.dtype == torch.float64 and "backend='reference'" in repr(m)


def test_initialisation_distribution_matches_torch():
    torch.manual_seed(0)
    m = flashseq.LSTM(64, 256)
    bound = 1 / math.sqrt(256)
    w = torch.cat([p.flatten() for p in m.parameters()])
    assert w.abs().max() <= bound
    # U(-a, a): mean 0, variance a^2/3; 4 standard errors of a sample of ~330k values
    n = w.numel()
    assert abs(w.mean().item()) < 4 * bound / math.sqrt(3 * n)
    assert abs(w.var().item() / (bound ** 2 / 3) - 1) < 4 * math.sqrt(0.8 / n)


def _dropout_model(cls, p):
    torch.manual_seed(0)
    return cls(4, 8, 3, dropout=p, dtype=torch.float64)


def test_dropout_is_deterministic_under_a_seed_and_off_in_eval():
    m = _dropout_model(flashseq.LSTM, 0.5)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    a, _ = m(x)
    torch.manual_seed(7)
    b, _ = m(x)
    torch.manual_seed(8)
    c, _ = m(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    m.eval()
    torch.manual_seed(7)
    d, _ = m(x)
    m0 = _dropout_model(flashseq.LSTM, 0.0)
    assert torch.equal(d, m0(x)[0])


def test_dropout_one_zeroes_every_inner_layer_input():
    m = _dropout_model(flashseq.GRU, 1.0)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    out, h_n = m(x)
    # with layer 1 and 2 fed zeros, the last layer equals a 1-layer GRU run on zeros
    last = flashseq.GRU(8, 8, dtype=torch.float64)
    last.load_state_dict({k[:-1] + "0": v for k, v in m.state_dict().items() if k.endswith("l2")})
    ref_out, ref_h = last(torch.zeros(5, 3, 8, dtype=torch.float64))
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-12)
    assert torch.allclose(h_n[2], ref_h[0], rtol=0, atol=1e-12)


def test_dropout_statistics_match_torch():
    """Train-mode outputs over many seeds: mean and spread agree with torch.nn.LSTM's (the two
    draw different masks, so only the distributions can agree)."""
    p, runs = 0.4, 300
    ref = _dropout_model(nn.LSTM, p)
    ours = _dropout_model(flashseq.LSTM, p)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        samples = {}
        for name, m in (("torch", ref), ("ours", ours)):
            torch.manual_seed(123)
            samples[name] = torch.stack([m(x)[0] for _ in range(runs)])  # [runs, T, B, H]
    mean_t, mean_o = samples["torch"].mean(0), samples["ours"].mean(0)
    std_t, std_o = samples["torch"].std(0), samples["ours"].std(0)
    assert std_o.min() > 0, "dropout had no effect"
    # difference of two means of `runs` samples: standard error sqrt(2/runs)*std; 5 of them
    z = (mean_o - mean_t).abs() / (std_t * math.sqrt(2 / runs) + 1e-12)
    assert z.max() < 5, f"max z-score {z.max():.2f}"
    assert 0.75 < (std_o.mean() / std_t.mean()).item() < 1.33


class TinyTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.encoder = nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.stack = nn.Sequential(nn.GRU(16, 5, batch_first=True))
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        x, _ = self.encoder(self.embed(tokens))
        x, _ = self.stack[0](x)
        return self.head(x)


def test_convert_shares_parameters_and_gives_identical_outputs():
    torch.manual_seed(0)
    model = TinyTagger().double()
    params_before = dict(model.named_parameters())
    tokens = torch.randint(0, 11, (3, 7))
    ref = copy.deepcopy(model)(tokens)
    assert flashseq.convert(model) is model
    assert type(model.encoder) is flashseq.LSTM and type(model.stack[0]) is flashseq.GRU
    assert repr(model.encoder) == "LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)"
    params_after = dict(model.named_parameters())
    assert params_after.keys() == params_before.keys()
    assert all(params_after[k] is params_before[k] for k in params_before)
    out = model(tokens)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    out.sum().backward()
    assert params_before["encoder.weight_hh_l1_reverse"].grad is not None


def test_convert_of_a_bare_rnn_module_and_of_nothing_to_convert():
    rnn = nn.RNN(3, 4, nonlinearity="relu")
    twin = flashseq.convert(rnn, backend="reference")
    assert type(twin) is flashseq.RNN and twin.nonlinearity == "relu" and twin.backend == "reference"
    assert twin.weight_ih_l0 is rnn.weight_ih_l0
    lin = nn.Linear(2, 2)
    assert flashseq.convert(lin) is lin
    with pytest.raises(ValueError, match="backend"):
        flashseq.convert(lin, backend="fastest")


def _rejects(build_torch, build_ours, match):
    """torch rejects it (any exception) and so do we, with a ValueError/TypeError whose message
    names the problem."""
    with pytest.raises(Exception):
        build_torch()
    with pytest.raises((ValueError, TypeError), match=match):
        build_ours()


@pytest.mark.parametrize("kwargs,match", [
    (dict(proj_size=6), "proj_size"), (dict(proj_size=-1), "proj_size"),
    (dict(dropout=1.5), "dropout"), (dict(dropout=-0.1), "dropout"), (dict(dropout=True), "dropout"),
    (dict(num_layers=0), "num_layers"), (dict(bias="yes"), "bias"), (dict(batch_first=1), "batch_first"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_constructor_arguments_are_rejected(kwargs, match):
    _rejects(lambda: nn.LSTM(5, 6, **kwargs), lambda: flashseq.LSTM(5, 6, **kwargs), match)


def test_bad_sizes_heads_nonlinearity_and_backend_are_rejected():
    _rejects(lambda: nn.LSTM(0, 6), lambda: flashseq.LSTM(0, 6), "input_size")
    _rejects(lambda: nn.GRU(5, 0), lambda: flashseq.GRU(5, 0), "hidden_size")
    _rejects(lambda: nn.RNN(5, 6, nonlinearity="gelu"), lambda: flashseq.RNN(5, 6, nonlinearity="gelu"),
             "nonlinearity")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        flashseq.LSTM(5, 6, num_heads=4)
    with pytest.raises(ValueError, match="backend"):
        flashseq.GRU(5, 6, backend="cudnn")
    with pytest.raises(ValueError, match="proj_size > 0 needs num_heads=1"):
        flashseq.LSTM(5, 6, proj_size=2, num_heads=2)
    with pytest.warns(UserWarning, match="num_layers=1"):
        flashseq.LSTM(5, 6, dropout=0.2)


FORWARD_ERRORS = {
    "input size": (lambda: torch.randn(4, 3, 7), None, "input_size"),
    "4-D input": (lambda: torch.randn(4, 3, 5, 1), None, "input"),
    "input dtype": (lambda: torch.randn(4, 3, 5, dtype=torch.float64), None, "dtype"),
    "hx batch": (lambda: torch.randn(4, 3, 5), lambda: torch.randn(2, 2, 6), "hx"),
    "hx layers": (lambda: torch.randn(4, 3, 5), lambda: torch.randn(1, 3, 6), "hx"),
    "hx size": (lambda: torch.randn(4, 3, 5), lambda: torch.randn(2, 3, 5), "hx"),
    "hx dims": (lambda: torch.randn(4, 3, 5), lambda: torch.randn(2, 6), "hx"),
    "unbatched hx dims": (lambda: torch.randn(4, 5), lambda: torch.randn(2, 1, 6), "hx"),
    "hx dtype": (lambda: torch.randn(4, 3, 5), lambda: torch.randn(2, 3, 6, dtype=torch.float64), "dtype"),
}


@pytest.mark.parametrize("case", list(FORWARD_ERRORS))
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bad_forward_arguments_are_rejected(case, kind):
    torch_cls, ours_cls, _ = KINDS[kind]
    make_x, make_h, match = FORWARD_ERRORS[case]
    ref, ours = torch_cls(5, 6, num_layers=2), ours_cls(5, 6, num_layers=2)
    x = make_x()
    hx = None if make_h is None else make_h()
    if hx is not None and kind == "lstm":
        hx = (hx, hx.clone())
    with pytest.raises(Exception):
        ref(x, hx)
    with pytest.raises((ValueError, TypeError), match=match) as info:
        ours(x, hx)
    if info.type is RNNInputError:  # also what torch raises, for code that catches RuntimeError
        assert isinstance(info.value, RuntimeError)


def test_lstm_hx_must_be_a_pair_and_input_a_tensor():
    m = flashseq.LSTM(5, 6)
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        m(torch.randn(4, 3, 5), torch.zeros(1, 3, 6))
    with pytest.raises(TypeError, match="torch.Tensor or a PackedSequence"):
        m([[1.0] * 5])
    with pytest.raises(RNNInputError, match="hx\\[1\\] \\(c0\\)"):
        m(torch.randn(4, 3, 5), (torch.zeros(1, 3, 6), torch.zeros(1, 2, 6)))
    with pytest.raises(RNNInputError, match="time step"):
        m(torch.randn(0, 3, 5))


def test_no_unexpected_warnings_on_fused_configurations():
    m = flashseq.GRU(5, 6, 2, bidirectional=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="flashseq.ops.fused_rnn: falling back")
        m(torch.randn(4, 3, 5))
