"""backend="cuda" (the persistent kernels of csrc/fused/): refusals on any machine, and on a GPU
the forward against the float64 reference.

GPU cases (``-m gpu``; bench/gpu_session.sh runs them, and the ``sanitizer`` case again under
compute-sanitizer): every cell, bf16 and fp16, DH 64/256/768 and 40 (padded to 48), NH*DH up to
4096, with and without lengths; fp32 (tf32 tensor cores, relative error <= 5e-4) at DH 64, 256
(NH*DH 4096) and 768. Each distinct plan is one JIT build; the fixture builds them all in
parallel first. Gradients (the save-mode forward + the persistent backward kernel + the
d(r)/d(b) product, flashseq/kernels/fused_rnn/cuda_function.py) against float64 autograd of
the reference, for every case (fp32: the backward on tf32 mma.sync too, <= 5e-4). The back
end is opt-in (FLASHSEQ_CUDA_KERNELS=1) until these tests have passed on a GPU; the tests here
opt in.
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
          (3, 11, 16, 256, torch.float16), (4, 13, 1, 40, torch.bfloat16),
          (5, 23, 2, 64, torch.float32), (3, 11, 16, 256, torch.float32),
          (9, 17, 1, 768, torch.float32)]
# relative error bounds: 16-bit inputs; float32 runs its product on tf32 tensor cores
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 5e-4}


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


@pytest.fixture
def set_tf32():
    """Sets torch.backends.cuda.matmul.allow_tf32 for one test and restores it after.
    (pytest's monkeypatch cannot: the module intercepts the attribute in __setattr__, and
    pytest >= 9.2 would delete it from the instance on undo.)"""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32

    def set_(allowed: bool):
        matmul.allow_tf32 = allowed

    yield set_
    matmul.allow_tf32 = before


def test_refuses_dtypes_it_cannot_serve(set_tf32):
    """float64 never; float32 (forward and backward on tf32 tensor cores) only where torch
    allows tf32 (torch.backends.cuda.matmul.allow_tf32, off by default: "auto" then keeps
    Triton's IEEE float32), with or without a gradient."""
    assert "float64" in cuda.unsupported_reason(_problem(dtype=torch.float64))
    set_tf32(False)
    assert "allow_tf32" in cuda.unsupported_reason(_problem(dtype=torch.float32))
    set_tf32(True)
    assert cuda.tf32_allowed()
    assert torch.float32 in cuda.SUPPORTED_DTYPES and torch.float32 in cuda.GRAD_DTYPES
    set_tf32(False)
    assert "allow_tf32" in cuda.unsupported_reason(_problem(dtype=torch.float32, needs_grad=True))


def test_float32_plans_are_the_tf32_instantiation():
    """A float32 problem gets the tf32 plan (4-byte elements: twice the weight registers of
    bf16) and the Fp32 element type: mma.sync m16n8k8 tf32 on sm_80, wgmma m64nNk8 tf32 on
    sm_90a (the plan's warps form whole warpgroups)."""
    from flashseq.kernels.fused_rnn.cuda_compile import expected_weight_loads
    for gpu, arch in (("a100", "sm_80"), ("h100", "sm_90a")):
        plan = plan_fused_rnn("gru", 16, 1, 64, "tf32", gpu, backend="cuda")
        half = plan_fused_rnn("gru", 16, 1, 64, torch.bfloat16, gpu, backend="cuda")
        spec = cuda.extension_spec(plan, arch)
        wgmma = arch == "sm_90a"
        assert "-DFLASHSEQ_ELEM=Fp32" in spec.cuda_cflags
        assert f"-DFLASHSEQ_GMMA={int(wgmma)}" in spec.cuda_cflags
        assert plan.onchip_weight_bytes == 2 * half.onchip_weight_bytes * plan.BH // half.BH
        assert plan.registers_per_thread > half.registers_per_thread
        if wgmma:  # 64-row tiles of the 3*BH gate rows x the warpgroup's k steps of 8
            assert expected_weight_loads(plan, arch) == 4 * -(-3 * plan.BH // 64) * (
                plan.padded_head_dim // (8 * plan.warps_m * plan.warps_n // 4))
        else:
            assert expected_weight_loads(plan, arch) == 4 * (3 * plan.BH // plan.warps_m // 16) * (
                plan.padded_head_dim // (8 * plan.warps_n))


def test_gradient_builds_are_the_save_mode_forward_and_the_backward():
    """A call with a gradient needs two more instantiations of the same plan: the forward with
    FLASHSEQ_FWD_SAVE=1 and the backward kernel with its own binding and register cap."""
    from flashseq.kernels.fused_rnn.cuda_compile import backward_defines
    plan = plan_fused_rnn("lstm", 16, 1, 256, torch.bfloat16, "h100", backend="cuda")
    fwd, save = cuda.extension_spec(plan, "sm_90a"), cuda.extension_spec(plan, "sm_90a", "forward_save")
    bwd = cuda.extension_spec(plan, "sm_90a", "backward")
    assert "-DFLASHSEQ_FWD_SAVE=1" in save.cuda_cflags and "-DFLASHSEQ_FWD_SAVE=1" not in fwd.cuda_cflags
    assert [s.rsplit("/", 1)[-1] for s in bwd.sources] == ["fused_rnn_cuda_bwd.cpp", "fused_rnn_bwd.cu"]
    assert f"-DFLASHSEQ_MAX_REGS={backward_defines(plan)['FLASHSEQ_MAX_REGS']}" in bwd.cuda_cflags
    assert "-DFLASHSEQ_CLUSTER=1" in bwd.cuda_cflags  # the H100 plan's split head: a cluster
    assert len({fwd.key(), save.key(), bwd.key()}) == 3
    with pytest.raises(ValueError, match="kind"):
        cuda.extension_spec(plan, "sm_90a", "sideways")


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


def _cases(grad=False):
    return [(cell, *shape, lengths) for cell in sorted(CELLS) for shape in SHAPES
            for lengths in (False, True) if not grad or shape[-1] in cuda.GRAD_DTYPES]


@pytest.fixture(scope="module")
def built():
    """Build every plan's extension at once (JIT builds run in child processes)."""
    keys = set()
    for cell, B, T, NH, DH, dtype, _ in _cases():
        plan = cuda._plan(cell, B, NH, DH, dtype, torch.device("cuda"))
        for kind in ("forward", "forward_save", "backward") if dtype in cuda.GRAD_DTYPES else ("forward",):
            keys.add(cuda._spec_key(plan, cuda._arch(torch.device("cuda")), kind))
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
def test_forward_matches_float64_reference(built, nan_poison_empty, set_tf32, cell, B, T, NH,
                                           DH, dtype, lengths):
    set_tf32(True)  # float32 runs on tf32
    gen = torch.Generator().manual_seed(B * 1000 + DH + T)
    (wx, r, b, states), lens = _inputs(cell, B, T, NH, DH, dtype, lengths, gen)
    h_ref, last_ref = fused_rnn_reference(wx.double(), r.double(), b.double(), states.double(),
                                          cell=get_cell(cell), lengths=None if lens is None else lens.cuda())
    h, last = fused_rnn(wx, r, b, states, cell=cell, lengths=lens, backend="cuda")
    assert torch.isfinite(h).all() and torch.isfinite(last).all()
    assert h.dtype == dtype and last.dtype == dtype
    assert _rel(h, h_ref) <= TOLERANCE[dtype], _rel(h, h_ref)
    assert _rel(last, last_ref) <= TOLERANCE[dtype], _rel(last, last_ref)
    if lens is not None:
        t = torch.arange(T, device="cuda").view(1, T, 1, 1)
        assert (h.masked_select(t >= lens.cuda().view(B, 1, 1, 1)) == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("cell, B, T, NH, DH, dtype, lengths", _cases(grad=True),
                         ids=[f"{c}-B{b}T{t}NH{n}DH{d}-{str(dt)[6:]}-{'len' if ln else 'full'}"
                              for c, b, t, n, d, dt, ln in _cases(grad=True)])
def test_gradients_match_float64_reference(built, nan_poison_empty, set_tf32, cell, B, T, NH,
                                           DH, dtype, lengths):
    """d(wx), d(r), d(b), d(states) of a random linear loss of h and the last states (float32:
    tf32 tensor cores in both kernels and in the d(r) product, <= 5e-4)."""
    set_tf32(True)
    gen = torch.Generator().manual_seed(B * 1000 + DH + T + 1)
    (wx, r, b, states), lens = _inputs(cell, B, T, NH, DH, dtype, lengths, gen)
    lens = None if lens is None else lens.cuda()
    dh = torch.randn(B, T, NH, DH, generator=gen).cuda()
    dlast = torch.randn(states.shape, generator=gen).cuda()
    leaves = [t.detach().requires_grad_(True) for t in (wx, r, b, states)]
    h, last = fused_rnn(*leaves, cell=cell, lengths=lens, backend="cuda")
    ((h.float() * dh).sum() + (last.float() * dlast).sum()).backward()
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (wx, r, b, states)]
    h_ref, last_ref = fused_rnn_reference(*ref_leaves, cell=get_cell(cell), lengths=lens)
    ((h_ref * dh.double()).sum() + (last_ref * dlast.double()).sum()).backward()
    for name, got, ref in zip(("wx", "r", "b", "states"), leaves, ref_leaves):
        assert got.grad is not None and torch.isfinite(got.grad).all(), name
        assert _rel(got.grad, ref.grad) <= TOLERANCE[dtype], (name, _rel(got.grad, ref.grad))
    if lens is not None:  # steps past a row's length get no gradient
        t = torch.arange(T, device="cuda").view(1, T, 1, 1, 1)
        assert (leaves[0].grad.masked_select(t >= lens.view(B, 1, 1, 1, 1)) == 0).all()


@pytest.mark.gpu
def test_auto_picks_cuda_with_and_without_gradient(built, monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    gen = torch.Generator().manual_seed(7)
    (wx, r, b, states), _ = _inputs("lstm", 5, 23, 2, 64, torch.bfloat16, False, gen)
    assert backends.choose_name("auto", _problem()) == "cuda"
    assert backends.choose_name("auto", _problem(needs_grad=True)) == "cuda"
    wx.requires_grad_(True)
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
        # the backward kernel too (save-mode forward, reversed loop, partial exchange)
        leaves = [t.detach().requires_grad_(True) for t in (wx, r, b, states)]
        h, last = fused_rnn(*leaves, cell=cell, lengths=lens.cuda(), backend="cuda")
        (h.float().sum() + last.float().sum()).backward()
        torch.cuda.synchronize()
        assert all(torch.isfinite(t.grad).all() for t in leaves)
