"""Bad arguments to the chunkwise linear recurrences raise TypeError/ValueError naming them."""
import pytest
import torch

import flashseq

B, T, H, K, V = 2, 6, 2, 4, 3


def _gla(**over):
    args = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
                g=-torch.rand(B, T, H, K))
    args.update(over)
    return args


def _call_gla(fn=flashseq.ops.chunk_gla, **over):
    a = _gla(**over)
    kw = {key: a.pop(key) for key in list(a) if key not in ("q", "k", "v", "g")}
    return fn(a["q"], a["k"], a["v"], a["g"], **kw)


@pytest.mark.parametrize("fn", [flashseq.ops.chunk_gla, flashseq.ops.fused_recurrent_gla],
                         ids=["chunk", "recurrent"])
@pytest.mark.parametrize("over, error, words", [
    (dict(k=torch.randn(B, T, H, K + 1)), ValueError, "k must have shape"),
    (dict(v=torch.randn(B, T + 1, H, V)), ValueError, "v must have shape"),
    (dict(g=torch.randn(B, T, H)), ValueError, "g must be 4-D"),
    (dict(q=torch.randn(B, T, H)), ValueError, "q must be 4-D"),
    (dict(q=torch.randn(B, T, H, K).int()), TypeError, "q must be float16"),
    (dict(k=torch.randn(B, T, H, K, dtype=torch.float64)), TypeError, "k must have q's dtype"),
    (dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    (dict(v=torch.randn(B, T, H, 300)), ValueError, "V must be in 1..256"),
    (dict(cu_seqlens=torch.tensor([0, 3, 6])), ValueError, "requires B = 1"),
    (dict(initial_state=torch.randn(B, H, K, V, dtype=torch.float16)), TypeError,
     "initial_state must be float32"),
    (dict(initial_state=torch.randn(B, H, V, K)), ValueError, "initial_state must have shape"),
    (dict(scale="big"), TypeError, "scale must be a float"),
    (dict(backend="cuda"), ValueError, "backend='cuda' is not known"),
])
def test_gla_bad_arguments(fn, over, error, words):
    with pytest.raises(error, match=words):
        _call_gla(fn, **over)


@pytest.mark.parametrize("cu, words", [
    (torch.tensor([0, 4, 4, 6]), "strictly increasing"),
    (torch.tensor([0, 5, 3, 6]), "strictly increasing"),
    (torch.tensor([0, 3, 5]), "end at T"),
    (torch.tensor([1, 3, 6]), "start at 0"),
    (torch.tensor([0, 3.0, 6]), "int32/int64"),
    (torch.tensor([[0, 3, 6]]), "1-D"),
])
def test_cu_seqlens_bad_values(cu, words):
    one = {name: t[:1] for name, t in _gla().items()}
    with pytest.raises(ValueError, match=words):
        flashseq.ops.chunk_gla(one["q"], one["k"], one["v"], one["g"], cu_seqlens=cu)


def test_cu_seqlens_initial_state_has_one_row_per_sequence():
    one = {name: t[:1] for name, t in _gla().items()}
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, H, K, V\] = \(3,"):
        flashseq.ops.chunk_gla(one["q"], one["k"], one["v"], one["g"],
                               cu_seqlens=torch.tensor([0, 1, 2, 6]),
                               initial_state=torch.zeros(1, H, K, V))


def test_delta_rule_bad_arguments():
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    beta = torch.rand(B, T, H)
    with pytest.raises(ValueError, match="beta must have shape"):
        flashseq.ops.chunk_delta_rule(q, k, v, beta[:, :-1])
    with pytest.raises(ValueError, match="g must have shape"):
        flashseq.ops.chunk_delta_rule(q, k, v, beta, g=torch.zeros(B, T, H + 1))
    with pytest.raises(ValueError, match="num_householder must be an int >= 1"):
        flashseq.ops.chunk_delta_rule(q, k, v, beta, num_householder=0)
    # n_h = 2 needs the extra axis on k, v and beta
    with pytest.raises(ValueError, match=r"k must be 5-D \[B, T, n_h, H, K\]"):
        flashseq.ops.fused_recurrent_delta_rule(q, k, v, beta, num_householder=2)
    k2, v2 = torch.randn(B, T, 2, H, K), torch.randn(B, T, 2, H, V)
    with pytest.raises(ValueError, match=r"beta must be 4-D"):
        flashseq.ops.chunk_delta_rule(q, k2, v2, beta, num_householder=2)


def test_mlstm_bad_arguments():
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    i, f = torch.randn(B, T, H), torch.randn(B, T, H)
    with pytest.raises(ValueError, match="f must have shape"):
        flashseq.ops.chunk_mlstm(q, k, v, i, f[:, :, :1])
    with pytest.raises(TypeError, match="initial_state of the mLSTM must be a tuple"):
        flashseq.ops.chunk_mlstm(q, k, v, i, f, initial_state=torch.zeros(B, H, K, V))
    state = (torch.zeros(B, H, K, V), torch.zeros(B, H, K), torch.zeros(B, H, 1))
    with pytest.raises(ValueError, match=r"initial_state\[2\] \(m\) must have shape"):
        flashseq.ops.fused_recurrent_mlstm(q, k, v, i, f, initial_state=state)


def test_triton_backend_refuses_plain_cpu_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a = _gla()
    with pytest.raises(NotImplementedError, match="backend 'triton' cannot run"):
        flashseq.ops.chunk_gla(a["q"], a["k"], a["v"], a["g"], backend="triton")


def test_triton_backend_refuses_bfloat16_in_the_interpreter(monkeypatch):
    """The interpreter's bf16 tl.dot is wrong: an explicit request is refused, never answered."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    a = {name: t.to(torch.bfloat16) if name != "g" else t for name, t in _gla().items()}
    with pytest.raises(NotImplementedError, match="bfloat16 under the Triton interpreter"):
        flashseq.ops.fused_recurrent_gla(a["q"], a["k"], a["v"], a["g"], backend="triton")
