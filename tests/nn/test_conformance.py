"""flashseq.LSTM/GRU/RNN against torch.nn.LSTM/GRU/RNN over every constructor argument.

The reference is torch's module in float64 holding the same weights; ours runs in float32 or
float64 and must match outputs, final states and the gradients of the input, of hx and of every
parameter within the dtype's tolerance.
"""
import itertools
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import flashseq
from tests.helpers import TOLERANCE, assert_close
from tests.nn.twins import FALLBACK_WARNING, KINDS, NOT_FUSED_WARNING, compare, make_pair, random_hx

pytestmark = [pytest.mark.filterwarnings(FALLBACK_WARNING), pytest.mark.filterwarnings(NOT_FUSED_WARNING)]

I, H, T, B = 5, 6, 4, 3


def seed_of(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


GRID = [
    pytest.param(kind, layers, bias, batch_first, bidir, dtype,
                 id=f"{kind}-L{layers}-{'bias' if bias else 'nobias'}-{'bf' if batch_first else 'tf'}-"
                    f"{'bi' if bidir else 'uni'}-{str(dtype)[6:]}")
    for kind, layers, bias, batch_first, bidir, dtype in itertools.product(
        KINDS, (1, 2), (True, False), (False, True), (False, True), (torch.float32, torch.float64))
]


@pytest.mark.parametrize("kind,layers,bias,batch_first,bidir,dtype", GRID)
def test_grid_matches_torch(kind, layers, bias, batch_first, bidir, dtype, nan_poison_empty, request):
    """Every argument combination, with random hx, in training mode with dropout 0."""
    seed = seed_of(request.node.callspec.id)
    ref, ours = make_pair(kind, I, H, dtype, seed, num_layers=layers, bias=bias,
                          batch_first=batch_first, bidirectional=bidir)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=torch.float64)
    out, finals = compare(ref, ours, x, random_hx(ref, B, seed), TOLERANCE[dtype], seed)
    D = 2 if bidir else 1
    out_size = ours.proj_size or H
    assert out.shape == ((B, T, D * out_size) if batch_first else (T, B, D * out_size))
    assert out.is_contiguous()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_packed_sequence(kind, bidir, sort, with_hx, request):
    seed = seed_of(request.node.callspec.id)
    ref, ours = make_pair(kind, I, H, torch.float64, seed, num_layers=2, bidirectional=bidir)
    g = torch.Generator().manual_seed(seed)
    Bp, Tp = 4, 7
    lengths = torch.tensor([3, 7, 1, 5])
    if sort:
        lengths = lengths.sort(descending=True).values
    x = torch.randn(Tp, Bp, I, generator=g, dtype=torch.float64)
    pack = lambda t: pack_padded_sequence(t, lengths, enforce_sorted=sort)  # noqa: E731
    hx = random_hx(ref, Bp, seed) if with_hx else None
    compare(ref, ours, x, hx, TOLERANCE[torch.float64], seed, pack=pack)
    out, _ = ours(pack(x.clone()), hx)
    expected = pack(x)
    assert torch.equal(out.batch_sizes, expected.batch_sizes)
    for mine, theirs in ((out.sorted_indices, expected.sorted_indices),
                         (out.unsorted_indices, expected.unsorted_indices)):
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_unbatched(kind, batch_first, with_hx, request):
    seed = seed_of(request.node.callspec.id)
    ref, ours = make_pair(kind, I, H, torch.float64, seed, num_layers=2, bidirectional=True,
                          batch_first=batch_first)
    x = torch.randn(T, I, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    hx = random_hx(ref, None, seed, unbatched=True) if with_hx else None
    out, finals = compare(ref, ours, x, hx, TOLERANCE[torch.float64], seed)
    assert out.shape == (T, 2 * (ours.proj_size or H))
    assert all(f.dim() == 2 for f in finals)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("steps,batch", [(1, 3), (5, 1), (1, 1)], ids=["T1", "B1", "T1B1"])
def test_single_step_and_single_row(kind, steps, batch, request):
    seed = seed_of(request.node.callspec.id)
    ref, ours = make_pair(kind, I, H, torch.float32, seed, bidirectional=True)
    x = torch.randn(steps, batch, I, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    compare(ref, ours, x, random_hx(ref, batch, seed), TOLERANCE[torch.float32], seed)


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_mode_and_no_grad(kind):
    ref, ours = make_pair(kind, I, H, torch.float64, 1, num_layers=2, dropout=0.5)
    ref.eval(), ours.eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        out_r, _ = ref(x)
        out_o, _ = ours(x)
    assert not out_o.requires_grad
    assert torch.allclose(out_o, out_r, rtol=0, atol=1e-12)


def test_empty_batch_gives_empty_results():
    ours = make_pair("lstm", I, H, torch.float32, 0, bidirectional=True)[1]
    out, (h, c) = ours(torch.randn(T, 0, I))
    assert out.shape == (T, 0, 2 * H) and h.shape == (2, 0, H) and c.shape == (2, 0, H)


@pytest.mark.parametrize("kind", ["lstm_proj", "rnn_relu"])
def test_unfused_configuration_warns_once(kind):
    _, ours = make_pair(kind, I, H, torch.float64, 0, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="no fused kernel") as record:
        ours(x)
        ours(x)
    assert sum("no fused kernel" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("backend", flashseq.ops.available_backends("cpu"))
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_every_available_backend(kind, backend, request):
    """The fused path through each back end that runs here, named explicitly (not via "auto"),
    on a bidirectional unsorted packed batch with hx."""
    seed = seed_of(request.node.callspec.id)
    ref, ours = make_pair(kind, I, H, torch.float32, seed, num_layers=2, bidirectional=True)
    ours.backend = backend
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, I, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pack = lambda t: pack_padded_sequence(t, lengths, enforce_sorted=False)  # noqa: E731
    compare(ref, ours, x, random_hx(ref, 4, seed), TOLERANCE[torch.float32], seed, pack=pack)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_autocast_runs_the_recurrence_in_the_autocast_dtype(kind):
    ref, ours = make_pair(kind, I, H, torch.float32, 3, num_layers=2)
    x = torch.randn(T, B, I)
    hx = random_hx(ref, B, 3)
    hx32 = tuple(h.float() for h in hx) if isinstance(hx, tuple) else hx.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ours(x, hx32)
    assert out.dtype == torch.bfloat16
    assert_close("output (bf16 autocast)", out, ref(x.double(), hx)[0], TOLERANCE[torch.bfloat16])
    out.float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32
