"""backend="cuda" (the persistent kernels of csrc/fused/): refusals on any machine, and on a GPU
the forward against the float64 reference.

GPU cases (``-m gpu``; bench/gpu_session.sh runs them, and the ``sanitizer`` case again under
compute-sanitizer): every cell, bf16 and fp16, DH 64/256/768 and 40 (padded to 48), NH*DH up to
4096, with and without lengths. Each distinct plan is one JIT build; the fixture builds them all
in parallel first. Forward only: the backward kernel does not exist yet, and a call that needs a
gradient is refused (tested here too). The back end is opt-in (FLASHSEQ_CUDA_KERNELS=1) until
these tests have passed on a GPU; the tests here opt in.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from flashseq.cells import CELLS, get_cell
from flashseq.kernels.fused_rnn import available_backends, backends, cuda, fused_rnn
from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
from flashseq.kernels.fused_rnn.problem import Problem
from flashseq.kernels.fused_rnn.reference import fused_rnn_reference

# (B, T, NH, DH, dtype): batch tiles partly filled, padded DH, NH*DH = 4096
SHAPES = [(5, 23, 2, 64, torch.bfloat16), (9, 17, 1, 768, torch.bfloat16),
          (3, 11, 16, 256, torch.float16), (4, 13, 1, 40, torch.bfloat16)]


def _problem(cell="lstm", dtype=torch.bfloat16, needs_grad=False, device="cuda"):
    return Problem(get_cell(cell), 4, 8, 2, 64, dtype, torch.device(device), False, needs_grad)


def test_cpu_lists_no_cuda_backend_and_says_why():
    assert "cuda" not in available_backends("cpu")
    assert "CUDA tensors" in cuda.unavailable_reason(torch.device("cpu"))


def test_cuda_backend_is_opt_in_until_verified_on_a_gpu(monkeypatch):
    monkeypatch.delenv(cuda.OPT_IN, raising=False)
    assert cuda.OPT_IN in cuda.unavailable_reason(torch.device("cuda"))
    monkeypatch.setenv(cuda.OPT_IN, "1")
    assert cuda.OPT_IN not in (cuda.unavailable_reason(torch.device("cuda")) or "")


@pytest.fixture(autouse=True)
def _opt_in(monkeypatch):
    """The GPU tests use the kernels (opt-in while unverified, see cuda.OPT_IN)."""
    monkeypatch.setenv(cuda.OPT_IN, "1")


def test_refuses_dtypes_and_gradients_it_cannot_serve():
    assert "float32" in cuda.unsupported_reason(_problem(dtype=torch.float32))
    assert "backward" in cuda.unsupported_reason(_problem(needs_grad=True))


def test_extension_spec_names_the_plan_instantiation():
    """The JIT build of a plan: the binding and the kernel source, the plan's tiles as -D flags,
    the architecture's gencode; distinct plans get distinct cache keys."""
    a = plan_fused_rnn("gru", 16, 1, 256, torch.bfloat16, "h100", backend="cuda")
    b = plan_fused_rnn("gru", 16, 1, 768, torch.bfloat16, "h100", backend="cuda")
    spec = cuda.extension_spec(a, "sm_90a")
    assert [s.rsplit("/", 1)[-1] for s in spec.sources] == ["fused_rnn_cuda.cpp", "fused_rnn_fwd.cu"]
    assert "-DFLASHSEQ_CELL=GruCell" in spec.cuda_cflags
    assert f"-DFLASHSEQ_BH={a.BH}" in spec.cuda_cflags
    assert f"-DFLASHSEQ_MAX_REGS={a.registers_per_thread}" in spec.cuda_cflags
    assert "-gencode=arch=compute_90a,code=sm_90a" in spec.cuda_cflags
    assert spec.key() != cuda.extension_spec(b, "sm_90a").key()
    assert spec.key() != cuda.extension_spec(a, "sm_80").key()


def _cases():
    return [(cell, *shape, lengths) for cell in sorted(CELLS) for shape in SHAPES
            for lengths in (False, True)]


@pytest.fixture(scope="module")
def built():
    """Build every plan's extension at once (JIT builds run in child processes)."""
    keys = set()
    for cell, B, T, NH, DH, dtype, _ in _cases():
        plan = cuda._plan(cell, B, NH, DH, dtype, torch.device("cuda"))
        keys.add(cuda._spec_key(plan, cuda._arch(torch.device("cuda"))))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(zip(keys, pool.map(cuda._extension, keys)))
    errors = [err for _, err in results.values() if err]
    assert not errors, errors[0]
    return results


def _inputs(cell, B, T, NH, DH, dtype, lengths, gen):
    c = get_cell(cell)
    wx = torch.randn(B, T, c.num_gates, NH, DH, generator=gen)
    r = torch.randn(c.num_gates, NH, DH, DH, generator=gen) / DH ** 0.5
    b = torch.randn(c.num_gates, NH, DH, generator=gen) * 0.1
    states = torch.randn(c.num_states, B, NH, DH, generator=gen) * 0.5
    if cell == "slstm":
        states[2] = states[2].abs() + 1.0  # the normaliser n starts positive
    lens = torch.randint(0, T + 1, (B,), generator=gen) if lengths else None
    return [t.to(dtype).cuda() for t in (wx, r, b, states)], lens


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("cell, B, T, NH, DH, dtype, lengths", _cases(),
                         ids=[f"{c}-B{b}T{t}NH{n}DH{d}-{str(dt)[6:]}-{'len' if ln else 'full'}"
                              for c, b, t, n, d, dt, ln in _cases()])
def test_forward_matches_float64_reference(built, nan_poison_empty, cell, B, T, NH, DH, dtype,
                                           lengths):
    gen = torch.Generator().manual_seed(B * 1000 + DH + T)
    (wx, r, b, states), lens = _inputs(cell, B, T, NH, DH, dtype, lengths, gen)
    h_ref, last_ref = fused_rnn_reference(wx.double(), r.double(), b.double(), states.double(),
                                          cell=get_cell(cell), lengths=None if lens is None else lens.cuda())
    h, last = fused_rnn(wx, r, b, states, cell=cell, lengths=lens, backend="cuda")
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert _rel(h, h_ref) <= 1e-2, _rel(h, h_ref)
    assert _rel(last, last_ref) <= 1e-2, _rel(last, last_ref)
    if lens is not None:
        t = torch.arange(T, device="cuda").view(1, T, 1, 1)
        assert (h.masked_select(t >= lens.cuda().view(B, 1, 1, 1)) == 0).all()


@pytest.mark.gpu
def test_auto_picks_cuda_without_gradient_and_falls_back_with_one(built, monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    gen = torch.Generator().manual_seed(7)
    (wx, r, b, states), _ = _inputs("lstm", 5, 23, 2, 64, torch.bfloat16, False, gen)
    assert backends.choose_name("auto", _problem()) == "cuda"
    wx.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="falling back to backend 'triton'"):
        h, _ = fused_rnn(wx, r, b, states, cell="lstm", backend="auto")
    h.float().sum().backward()
    assert torch.isfinite(wx.grad).all()


@pytest.mark.sanitizer
def test_one_split_and_one_fused_case_under_the_sanitizer():
    """Run by bench/gpu_session.sh under compute-sanitizer (memcheck, racecheck): a head split
    over blocks (cluster on sm_90a, global exchange elsewhere) and a one-block head."""
    for cell, B, T, NH, DH, dtype in (("lstm", 5, 6, 2, 256, torch.bfloat16),
                                      ("elman", 3, 5, 2, 64, torch.float16)):
        gen = torch.Generator().manual_seed(DH)
        (wx, r, b, states), lens = _inputs(cell, B, T, NH, DH, dtype, True, gen)
        h, last = fused_rnn(wx, r, b, states, cell=cell, lengths=lens, backend="cuda")
        torch.cuda.synchronize()
        h_ref, _ = fused_rnn_reference(wx.double(), r.double(), b.double(), states.double(),
                                       cell=get_cell(cell), lengths=lens.cuda())
        assert _rel(h, h_ref) <= 1e-2
