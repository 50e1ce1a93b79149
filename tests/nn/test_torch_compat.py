"""flashseq.LSTM/GRU/RNN as torch.nn's own classes: isinstance, torch's bookkeeping attributes
(.to, deepcopy, pickle, DataParallel replicas), convert + an isinstance-based init loop,
proj_size on GRU/RNN, empty batches, and whole-model checkpoints loaded with weights_only=True."""
import copy
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import flashseq
from tests.helpers import assert_close
from tests.nn.twins import FALLBACK_WARNING, KINDS, NOT_FUSED_WARNING, make_pair

pytestmark = [pytest.mark.filterwarnings(FALLBACK_WARNING), pytest.mark.filterwarnings(NOT_FUSED_WARNING)]

REPO = Path(__file__).resolve().parents[2]


def _states(h_n):
    return list(h_n) if isinstance(h_n, tuple) else [h_n]


@pytest.mark.parametrize("kind", list(KINDS))
def test_modules_are_instances_of_their_torch_class(kind):
    torch_cls, ours_cls, extra = KINDS[kind]
    m = ours_cls(5, 6, 2, bidirectional=True, **extra)
    assert isinstance(m, torch_cls) and isinstance(m, nn.RNNBase)
    # torch's bookkeeping exists and names every parameter in torch's order
    ref = torch_cls(5, 6, 2, bidirectional=True, **extra)
    assert m._flat_weights_names == ref._flat_weights_names
    assert m._all_weights == ref._all_weights
    assert [w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names)] == \
        [True] * len(m._flat_weights_names)
    assert [r() is w for r, w in zip(m._flat_weight_refs, m._flat_weights)] == [True] * len(m._flat_weights)
    assert m.mode == ref.mode and repr(m) == repr(ref)
    m.flatten_parameters()


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_double_deepcopy_pickle_and_replicas_keep_torch_bookkeeping(kind):
    torch_cls, ours_cls, extra = KINDS[kind]
    torch.manual_seed(0)
    m = ours_cls(3, 4, 2, bidirectional=True, **extra)
    x = torch.randn(5, 2, 3)
    y = m(x)[0]
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(other) is type(m)
        assert_close("copy output", other(x)[0], y, 1e-6)
        assert [w is getattr(other, n) for w, n in zip(other._flat_weights, other._flat_weights_names)] == \
            [True] * len(other._flat_weights)
    replica = m._replicate_for_data_parallel()
    assert replica._flat_weights is not m._flat_weights
    m.double()
    assert all(w.dtype == torch.float64 for w in m._flat_weights)
    assert [w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names)] == \
        [True] * len(m._flat_weights)
    assert_close("float64 output", m(x.double())[0], y.double(), 1e-6)
    # a state_dict goes both ways, strict
    ref = torch_cls(3, 4, 2, bidirectional=True, dtype=torch.float64, **extra)
    ref.load_state_dict(m.state_dict(), strict=True)
    m.load_state_dict(ref.state_dict(), strict=True)
    assert_close("torch output", m(x.double())[0], ref(x.double())[0], 1e-10)


def test_a_module_pickled_before_the_torch_subclassing_still_loads():
    # earlier flashseq modules kept no _flat_weights list in their state
    m = flashseq.GRU(3, 4, 2)
    state = dict(m.__getstate__())
    del state["_flat_weights"]
    loaded = flashseq.GRU.__new__(flashseq.GRU)
    loaded.__setstate__(state)
    assert [w is getattr(m, n) for w, n in zip(loaded._flat_weights, m._flat_weights_names)] == \
        [True] * len(m._flat_weights_names)
    x = torch.randn(5, 2, 3)
    assert torch.equal(loaded(x)[0], m(x)[0])


def test_headwise_lstm_keeps_its_weight_shape_and_is_an_lstm():
    m = flashseq.LSTM(5, 8, num_heads=2)
    assert isinstance(m, nn.LSTM) and m.weight_hh_l0.shape == (4, 2, 4, 4)
    assert m._flat_weights[1] is m.weight_hh_l0
    assert repr(m) == "LSTM(5, 8, num_heads=2)"
    assert m(torch.randn(3, 2, 5))[0].shape == (3, 2, 8)


def test_convert_then_isinstance_based_init_loop_reaches_the_converted_layers():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 6, 2), nn.GRU(6, 6), nn.RNN(6, 6))
    originals = [list(m.parameters()) for m in model[1:]]
    flashseq.convert(model)
    assert [type(m).__module__.startswith("flashseq") for m in model[1:]] == [True] * 3
    for m, params in zip(model[1:], originals):  # torch's bookkeeping names the shared tensors
        assert [w is p for w, p in zip(m._flat_weights, params)] == [True] * len(params)
        assert [r() is p for r, p in zip(m._flat_weight_refs, params)] == [True] * len(params)
    seen = []
    for m in model.modules():
        if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            seen.append(type(m).__name__)
            for name, p in m.named_parameters():
                nn.init.constant_(p, 0.5 if name.startswith("weight") else 0.0)
    assert seen == ["LSTM", "GRU", "RNN"]
    assert all(float(p.detach().flatten()[0]) in (0.5, 0.0) for p in model[1:].parameters())


@pytest.mark.parametrize("cls", [flashseq.GRU, flashseq.RNN], ids=["GRU", "RNN"])
def test_proj_size_on_gru_and_rnn_is_a_value_error_as_in_torch(cls):
    torch_cls = getattr(nn, cls.__name__)
    with pytest.raises(ValueError, match="proj_size"):
        torch_cls(5, 6, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        cls(5, 6, proj_size=4)
    with pytest.raises(TypeError, match="not_an_argument"):
        cls(5, 6, not_an_argument=1)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_empty_batch_gives_torch_shapes_and_gradients(kind, with_hx):
    ref, ours = make_pair(kind, 3, 4, torch.float64, seed=0, num_layers=2, bidirectional=True)
    results = []
    for module in (ref, ours):
        x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
        hx = None
        if with_hx:
            size = ref.proj_size or ref.hidden_size
            h0 = torch.zeros(4, 0, size, dtype=torch.float64, requires_grad=True)
            hx = (h0, torch.zeros(4, 0, 4, dtype=torch.float64, requires_grad=True)) \
                if isinstance(ref, nn.LSTM) else h0
        out, h_n = module(x, hx)
        (out.sum() + sum(s.sum() for s in _states(h_n))).backward()
        grads = [x.grad] + ([t.grad for t in _states(hx)] if with_hx else [])
        grads += [p.grad for p in module.parameters()]
        results.append((out, _states(h_n), grads))
    (out_r, states_r, grads_r), (out_o, states_o, grads_o) = results
    assert out_o.shape == out_r.shape and [s.shape for s in states_o] == [s.shape for s in states_r]
    assert [None if g is None else g.shape for g in grads_o] == [None if g is None else g.shape for g in grads_r]
    for g_o, g_r in zip(grads_o, grads_r):
        assert g_o is not None and torch.equal(g_o, g_r)


SAVE = """
import sys, torch
sys.path.insert(0, sys.argv[2])
import flashseq, word_model
torch.manual_seed(0)
rnn = {"lstm": flashseq.LSTM(4, 6, 2), "gru": flashseq.GRU(4, 6, 2), "rnn": flashseq.RNN(4, 6, 2)}[sys.argv[3]]
model = word_model.WordModel(rnn).eval()
tokens = torch.randint(0, 11, (7, 3))
torch.save(model, sys.argv[1] + "/model.pt")
torch.save({"tokens": tokens, "logits": model(tokens).detach()}, sys.argv[1] + "/expected.pt")
"""

LOAD = """
import sys, torch
sys.path.insert(0, sys.argv[2])
import flashseq, word_model
torch_classes = [torch.nn.Embedding, torch.nn.Linear]  # flashseq's classes are not listed
with torch.serialization.safe_globals([word_model.WordModel, *torch_classes]):
    model = torch.load(sys.argv[1] + "/model.pt", weights_only=True)
expected = torch.load(sys.argv[1] + "/expected.pt", weights_only=True)
assert type(model.rnn).__module__.startswith("flashseq"), type(model.rnn)
assert torch.equal(model(expected["tokens"]), expected["logits"])
print("loaded", type(model.rnn).__name__)
"""

WORD_MODEL = """
from torch import nn


class WordModel(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.embedding, self.rnn, self.decoder = nn.Embedding(11, 4), rnn, nn.Linear(6, 11)

    def forward(self, tokens):
        return self.decoder(self.rnn(self.embedding(tokens))[0])
"""


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_whole_model_checkpoint_loads_with_weights_only_in_a_new_process(kind, tmp_path):
    (tmp_path / "word_model.py").write_text(textwrap.dedent(WORD_MODEL))
    for script in (SAVE, LOAD):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path), kind],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"loaded {kind.upper()}" in proc.stdout
