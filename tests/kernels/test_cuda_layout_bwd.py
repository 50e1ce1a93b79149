"""The CUDA backward kernel's index math (csrc/fused/layout_bwd.h) reassembles d(h_prev), on a CPU.

tests/kernels/cuda_layout_sim_bwd.cpp (built with g++, cached like the forward's simulation)
runs one reversed step's product for every block, warp and lane of a plan's tiling through the
functions csrc/fused/backward.cuh calls: the pointwise threads' d(rh) into shared memory, the
transposed weight fragments loaded as 32-bit pairs from the padded r, the d(rh) fragments, the
partial sums of each block and of its split reduction, and the sum of the P blocks' partials
for each block's own units (a cluster's distributed shared memory, or the fp32 global buffer).
The tensor core is emulated from the PTX lane tables of tests/kernels/test_cuda_layout.py. The
H100 tilings are also simulated on the wgmma path (sm_90a): warpgroup-wide m64nNk16 products
(m64nNk8 for tf32) over 64-row tiles of k (the last tile's rows past DHP zero), A from the lanes' registers as the
kernel loads them, B = d(rh)^T read from the shared d(rh) buffer at the addresses the PTX ISA
gives for the matrix descriptor layout_bwd.h encodes (the simulation decodes it: start address,
leading and stride byte offsets, canonical K-major layout without swizzling). The
result must equal d(h_prev)[b, n, k] = sum_{g, e} d(rh)[b, g, n, e] * r[g, n, k, e] exactly
(small integer inputs), with either parity of the double-buffered partials; the simulation
fails on any element written twice or never, or outside its parity's buffer.

Beyond the DH list: the backward's own plans at sizes where it runs mma.sync on sm_90a (no
wgmma tiling fits) or pads wider than the forward (units past DH masked, r padded to the
backward's DHP), also with r's padding nonzero (the masks alone must keep it out), and faults
in that padding (an unmasked d(rh) past DH, r padded to the forward's DHP) that the simulation
catches.
"""
import shutil
import sys

import pytest
import torch

from tests.kernels.cuda_test_helpers import ROOT, build_layout_sim, run_layout_sim
from tests.kernels.test_cuda_layout import _plans, _ptx_tables, _wgmma_tables

SIM_SOURCES = (ROOT / "tests" / "kernels" / "cuda_layout_sim_bwd.cpp",
               ROOT / "tests" / "kernels" / "cuda_layout_sim_common.h",
               ROOT / "csrc" / "fused" / "layout_bwd.h", ROOT / "csrc" / "fused" / "layout.h")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host simulation")


@pytest.fixture(scope="module")
def sim_binary():
    return build_layout_sim("cuda_layout_sim_bwd", SIM_SOURCES)


def _simulate(binary, tmp_path, tiling, r, dg, cluster, tables=None, parity=1, poison=False,
              unmasked=False, r_padding=None):
    """d(h_prev) [B, NH, DH] (float64) as the simulated backward step forms it from d(rh)
    ``dg`` [B, G, NH, DH] and ``r`` [G, NH, DH, DH]. ``poison``: r's padding past DH holds
    nonzero values instead of zeros; ``unmasked``: fault injection, the units past DH carry a
    nonzero d(rh); ``r_padding``: the DHP the host pads r to (default the tiling's, as
    cuda_function does)."""
    NH, DH = r.shape[1], r.shape[2]
    B = dg.shape[0]
    gmma = tiling.get("gmma", 0)
    tables = tables or (_wgmma_tables(tiling["BB"], tiling["K"]) if gmma else _ptx_tables(tiling["K"]))
    header = [tiling[n] for n in ("G", "BB", "BH", "WM", "WK", "DHP", "P", "K", "elem_bytes")]
    names = ("a", "d") if gmma else ("a", "b", "c")
    mode = int(cluster) | (parity << 1) | (int(poison) << 2) | (int(unmasked) << 3)
    return run_layout_sim(binary, tmp_path, header + [B, NH, DH, mode, gmma, r_padding or tiling["DHP"]],
                          tables, names, (r, dg), (B, NH, DH), f"backward layout simulation for {tiling}")


def _backward_plan_tilings():
    """The backward kernel's own plans (plan_bwd.py, the tiles it is built at): 4 cells x
    H100/A100 x bf16/tf32 x DH 64, 256 and 768; the H100 ones that take wgmma on that path."""
    from flashseq.cells import CELLS
    from flashseq.kernels.fused_rnn.plan_bwd import plan_fused_rnn_backward
    from tests.kernels.test_cuda_layout import _tiling

    cases = {}
    for cell in sorted(CELLS):
        for gpu in ("h100", "a100"):
            for dtype in ("bfloat16", "tf32"):
                for dh in (64, 256, 768):
                    plan = plan_fused_rnn_backward(cell, 16, 1, dh, dtype, gpu)
                    tiling = _tiling(plan, gmma=int(plan.wgmma))
                    key = (dh, tuple(sorted(tiling.items())), plan.cluster_size > 1)
                    cases.setdefault(key, f"bwdplan-{cell}-{gpu}-{dtype}-DH{dh}" + ("-wgmma" if plan.wgmma else ""))
    return cases


def _bwd_plans():
    # every tiling of the forward's list (bf16: mma.sync m16n8k16, and wgmma m64nNk16 on H100;
    # tf32: mma.sync m16n8k8, and wgmma m64nNk8 on H100; fp32 elements) and of the backward's
    # own plans (the tiles the backward kernel is built at)
    params = _plans()
    seen = {(p.values[0], tuple(sorted(p.values[1].items())), p.values[2]) for p in params}
    for (dh, t, clus), name in _backward_plan_tilings().items():
        if (dh, t, clus) not in seen:
            params.append(pytest.param(dh, dict(t), clus, id=name))
    return params


@pytest.mark.parametrize("head_dim, tiling, plan_cluster", _bwd_plans())
def test_backward_fragments_reassemble_dh_prev(sim_binary, tmp_path, head_dim, tiling, plan_cluster):
    """Every distinct bf16 and tf32 CUDA tiling the solver picks (4 cells, H100/A100, DH 64, 256,
    768 and 40; the H100 ones on mma.sync and on wgmma), both exchanges and both step parities, batch 13
    (a partial batch tile), two heads (one at DH 768)."""
    gen = torch.Generator().manual_seed(head_dim * 104729 + tiling["BH"] * 37 + tiling["WK"])
    heads = 1 if head_dim == 768 else 2
    G, B = tiling["G"], 13
    r = torch.randint(-3, 4, (G, heads, head_dim, head_dim), generator=gen).double()
    dg = torch.randint(-3, 4, (B, G, heads, head_dim), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    for cluster, parity in ((False, 0), (False, 1), (True, 0), (True, 1)):
        got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster, parity=parity)
        assert torch.equal(got, want), (f"cluster={cluster} parity={parity}: "
                                        f"{int((got != want).sum())} of {want.numel()} elements differ")
    assert int((want != 0).sum()) > want.numel() // 2


def test_backward_plans_cover_the_head_dims():
    """The parametrisation is not empty: DH 64, 256 and 768 each have backward tilings, in
    16-bit and in tf32."""
    for k in (16, 8):
        dims = {p.values[0] for p in _bwd_plans() if p.values[1]["K"] == k}
        assert {64, 256, 768} <= dims, k


@pytest.mark.parametrize("dtype", ["bfloat16", "tf32"])
def test_backward_plans_cover_wgmma(dtype):
    """Every H100 plan of DH 64, 256 and 768, bf16 and tf32 (float32 inputs), the forward's and
    the backward's own (plan_bwd.py), is simulated on the wgmma path (sm_90a)."""
    from flashseq.cells import CELLS
    from flashseq.kernels.fused_rnn import cuda_compile
    from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
    from flashseq.kernels.fused_rnn.plan_bwd import plan_fused_rnn_backward
    from tests.kernels.test_cuda_layout import _tiling

    simulated = {(p.values[0], tuple(sorted(p.values[1].items()))) for p in _bwd_plans()
                 if p.values[1].get("gmma")}
    for cell in sorted(CELLS):
        for dh in (64, 256, 768):
            plan = plan_fused_rnn(cell, 16, 1, dh, dtype, "h100", backend="cuda")
            assert cuda_compile.wgmma_serves(plan), plan
            assert (dh, tuple(sorted(_tiling(plan, gmma=1).items()))) in simulated, (cell, dh)
            # the tiles the backward kernel is built at (its own plan, plan_bwd.py)
            bplan = plan_fused_rnn_backward(cell, 16, 1, dh, dtype, "h100")
            assert bplan.wgmma and cuda_compile.uses_wgmma("sm_90a", bplan), bplan
            assert (dh, tuple(sorted(_tiling(bplan, gmma=1).items()))) in simulated, (cell, dh)


# Backward plans of the two kinds the DH list above does not reach (plan_fused_rnn_backward at
# these sizes; test_backward_extension_plans_are_of_their_kind keeps them so): "fallback", an
# H100 plan on mma.sync because no wgmma tiling fits (the sm_90a build then runs mma.sync), and
# "wide", a backward padded wider than the forward (padding_candidates: DHP past DH rounded up
# to 16, the units past DH masked, r zero-padded to the backward's DHP by cuda_function).
EXTENSION_SIZES = [
    # (cell, batch, heads, DH, dtype, gpu, kind)
    ("elman", 16, 1, 40, "bfloat16", "h100", "fallback"),   # 48 gate columns: one warp, a cluster of 3
    ("gru", 16, 1, 16, "bfloat16", "h100", "fallback"),     # DH <= 16: every H100 GRU/Elman head
    ("elman", 16, 1, 16, "tf32", "h100", "fallback"),
    ("gru", 16, 1, 8, "tf32", "h100", "fallback"),          # DH 8 in a 16-row tile: 8 masked units
    ("gru", 32, 2, 99, "tf32", "h100", "fallback"),         # odd DH, mma.sync in a cluster of 7
    ("elman", 256, 2, 99, "tf32", "h100", "fallback"),      # BB 32
    ("lstm", 64, 4, 200, "bfloat16", "h100", "fallback"),   # global exchange, 13 blocks per head
    ("lstm", 64, 4, 176, "tf32", "a100", "wide"),           # 176 -> 192, global exchange
    ("lstm", 64, 4, 208, "tf32", "h100", "wide"),           # 208 -> 224, wgmma in a cluster of 7
    ("lstm", 256, 2, 176, "bfloat16", "a100", "wide"),      # 176 -> 192, BB 16
    ("lstm", 256, 2, 176, "tf32", "a100", "wide"),          # BB 32
    ("gru", 64, 4, 240, "bfloat16", "h100", "wide"),        # 240 -> 256, wgmma
    ("slstm", 64, 4, 208, "tf32", "a100", "wide"),          # 208 -> 256, BB 64
    ("lstm", 64, 4, 99, "bfloat16", "a100", "odd"),         # BB 32, DH 99 -> 112
]


def _extension_plan(cell, batch, heads, dh, dtype, gpu):
    from flashseq.kernels.fused_rnn.plan_bwd import plan_fused_rnn_backward
    from tests.kernels.test_cuda_layout import _tiling

    plan = plan_fused_rnn_backward(cell, batch, heads, dh, dtype, gpu)
    return plan, _tiling(plan, gmma=int(plan.wgmma))


def _size_id(size):
    cell, batch, heads, dh, dtype, gpu, kind = size
    return f"{kind}-{cell}-{gpu}-{dtype}-DH{dh}-B{batch}x{heads}"


@pytest.mark.parametrize("size", EXTENSION_SIZES, ids=_size_id)
def test_backward_extension_plans_are_of_their_kind(size):
    """Each size still plans the kind it stands for (else its simulation covers something else)."""
    cell, batch, heads, dh, dtype, gpu, kind = size
    plan, _ = _extension_plan(cell, batch, heads, dh, dtype, gpu)
    rounded = -(-dh // 16) * 16
    if kind == "fallback":
        assert gpu == "h100" and not plan.wgmma, plan
    elif kind == "wide":
        assert plan.padded_head_dim > rounded, plan
    else:
        assert plan.padded_head_dim == rounded and plan.BB >= 32, plan


def test_backward_extension_sizes_span_the_sweep():
    """Both GPUs, bf16 and tf32, odd DH, BB 16 and 32, both exchanges, wgmma and mma.sync."""
    plans = [(s, *_extension_plan(*s[:6])) for s in EXTENSION_SIZES]
    assert {s[5] for s, _, _ in plans} == {"a100", "h100"}
    assert {s[4] for s, _, _ in plans} == {"bfloat16", "tf32"}
    assert any(s[3] % 2 for s, _, _ in plans)
    assert {16, 32} <= {p.BB for _, p, _ in plans}
    assert {p.cluster_size > 1 for _, p, _ in plans} == {True, False}
    assert any(p.wgmma for s, p, _ in plans if s[6] == "wide")
    assert any(p.programs_per_head > 1 and p.cluster_size == 1 for s, p, _ in plans if s[6] == "fallback")


@pytest.mark.parametrize("size", EXTENSION_SIZES, ids=_size_id)
def test_backward_extension_plans_reassemble_dh_prev(sim_binary, tmp_path, size):
    """The fallback, wide and odd plans above: every block, warp and lane of the plan's own tiling
    (its wgmma or mma.sync product, both exchanges, both parities), a partial last batch tile and
    two heads; d(h_prev) must equal the float64 product exactly, also when r's padding past DH
    holds nonzero values (the units past DH add nothing: their d(rh) is zero and their rows are
    never gathered; the simulation fails on a masked unit's output written, as d(h_prev) has no
    slot for it, or on any weight read outside the padded r)."""
    cell, batch, heads, dh, dtype, gpu, kind = size
    plan, tiling = _extension_plan(cell, batch, heads, dh, dtype, gpu)
    gen = torch.Generator().manual_seed(dh * 7 + tiling["BB"] + tiling["G"])
    G, B, NH = tiling["G"], 2 * tiling["BB"] - 3, 2
    r = torch.randint(-3, 4, (G, NH, dh, dh), generator=gen).double()
    dg = torch.randint(-3, 4, (B, G, NH, dh), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    plan_cluster = plan.cluster_size > 1
    for cluster, parity, poison in ((plan_cluster, 0, False), (plan_cluster, 1, True),
                                    (not plan_cluster, 1, False), (not plan_cluster, 0, True)):
        got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster, parity=parity, poison=poison)
        assert torch.equal(got, want), (f"cluster={cluster} parity={parity} poison={poison}: "
                                        f"{int((got != want).sum())} of {want.numel()} elements differ")
    assert int((want != 0).sum()) > want.numel() // 2


@pytest.mark.parametrize("size", [s for s in EXTENSION_SIZES if s[6] == "wide"][:2] +
                         [EXTENSION_SIZES[3]], ids=_size_id)
def test_backward_padding_faults_are_caught(sim_binary, tmp_path, size):
    """The new coverage can fail: with r's padding nonzero, units past DH whose d(rh) is not
    masked change d(h_prev); and r padded to the forward's DHP (DH rounded up to 16) instead of
    the backward's wider one puts the weights at the wrong strides (wide plans)."""
    cell, batch, heads, dh, dtype, gpu, kind = size
    plan, tiling = _extension_plan(cell, batch, heads, dh, dtype, gpu)
    gen = torch.Generator().manual_seed(11)
    G, B = tiling["G"], tiling["BB"] + 1
    r = torch.randint(-3, 4, (G, 1, dh, dh), generator=gen).double()
    dg = torch.randint(-3, 4, (B, G, 1, dh), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    cluster = plan.cluster_size > 1
    assert torch.equal(_simulate(sim_binary, tmp_path, tiling, r, dg, cluster, poison=True), want)
    got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster, poison=True, unmasked=True)
    assert not torch.equal(got, want)
    if kind == "wide":
        # either a weight read falls outside the smaller r (the simulation exits with that
        # message) or the misplaced weights change the product
        try:
            got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster, r_padding=-(-dh // 16) * 16)
            caught = not torch.equal(got, want)
        except AssertionError as e:
            caught = "weight load outside the padded r" in str(e)
        assert caught, "r padded to the forward's DHP went unnoticed"


@pytest.mark.parametrize("tiling", [
    # DHP 48: one 64-row tile of k whose last 16 rows are padding; N = BB = 16
    dict(G=4, BB=16, BH=16, WM=4, WK=1, DHP=48, P=3, K=16, elem_bytes=2, gmma=1),
    # two warpgroups, one m tile: the warpgroups split the gate columns (GWK = 2)
    dict(G=4, BB=8, BH=16, WM=2, WK=4, DHP=64, P=4, K=16, elem_bytes=2, gmma=1),
    # two warpgroups over two m tiles (GWM = 2), three gates
    dict(G=3, BB=8, BH=16, WM=1, WK=8, DHP=128, P=8, K=16, elem_bytes=2, gmma=1),
    # the same three on tf32 (m64nNk8, fp32 elements)
    dict(G=4, BB=16, BH=16, WM=4, WK=1, DHP=48, P=3, K=8, elem_bytes=4, gmma=1),
    dict(G=4, BB=8, BH=16, WM=2, WK=4, DHP=64, P=4, K=8, elem_bytes=4, gmma=1),
    dict(G=3, BB=8, BH=16, WM=1, WK=8, DHP=128, P=8, K=8, elem_bytes=4, gmma=1),
], ids=["padded-rows-N16", "split-columns", "split-rows", "tf32-padded-rows-N16", "tf32-split-columns",
        "tf32-split-rows"])
def test_backward_wgmma_beyond_the_plans(sim_binary, tmp_path, tiling):
    """Tilings the DH list's plans do not reach but the wgmma path serves: padding rows past
    DHP, N = 16, warpgroups splitting the columns (their partials summed), or the rows."""
    DH = tiling["DHP"] - 3
    gen = torch.Generator().manual_seed(tiling["DHP"] + tiling["WM"])
    r = torch.randint(-3, 4, (tiling["G"], 2, DH, DH), generator=gen).double()
    dg = torch.randint(-3, 4, (19, tiling["G"], 2, DH), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    for cluster, parity in ((False, 1), (True, 0)):
        got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster, parity=parity)
        assert torch.equal(got, want), f"cluster={cluster}: {int((got != want).sum())} elements differ"


@pytest.mark.parametrize("k", [16, 8], ids=["16bit", "tf32"])
@pytest.mark.parametrize("fault", ["a_warps", "a_cols", "d_halves"])
def test_backward_wgmma_simulation_catches_a_fault(sim_binary, tmp_path, fault, k):
    """The wgmma check can fail (m64nNk16 and tf32 m64nNk8): the A table with two warps' row
    blocks exchanged, or its two column halves, or the D table with its two 8-row halves
    exchanged, makes the simulated d(h_prev) differ."""
    tiling = dict(G=4, BB=8, BH=32, WM=1, WK=4, DHP=256, P=8, K=k, elem_bytes=32 // k, gmma=1)
    gen = torch.Generator().manual_seed(3)
    r = torch.randint(-3, 4, (4, 1, 256, 256), generator=gen).double()
    dg = torch.randint(-3, 4, (8, 4, 1, 256), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    assert torch.equal(_simulate(sim_binary, tmp_path, tiling, r, dg, cluster=True), want)
    t = _wgmma_tables(8, k)
    if fault == "a_warps":
        t["a"] = t["a"][32:64] + t["a"][:32] + t["a"][64:]
    elif fault == "a_cols":
        t["a"] = [[(row, col ^ (k // 2)) for row, col in th] for th in t["a"]]
    else:
        t["d"] = [[((row + 8) % 16 + 16 * (row // 16), col) for row, col in th] for th in t["d"]]
    got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster=True, tables=t)
    assert not torch.equal(got, want)


@pytest.mark.parametrize("k", [16, 8])
def test_backward_simulation_catches_a_wrong_table(sim_binary, tmp_path, k):
    """The check can fail: the A table with its two column halves swapped (a plausible
    transposition slip) gives a different d(h_prev), for m16n8k16 and tf32 m16n8k8."""
    tiling = dict(G=4, BB=8, BH=16, WM=1, WK=4, DHP=64, P=4, K=k, elem_bytes=32 // k)
    gen = torch.Generator().manual_seed(1)
    r = torch.randint(-3, 4, (4, 1, 64, 64), generator=gen).double()
    dg = torch.randint(-3, 4, (8, 4, 1, 64), generator=gen).double()
    want = torch.einsum("bgne,gnke->bnk", dg, r)
    assert torch.equal(_simulate(sim_binary, tmp_path, tiling, r, dg, cluster=False), want)
    bad = _ptx_tables(k)
    bad["a"] = [[(row, col ^ (k // 2)) for row, col in lane] for lane in bad["a"]]
    got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster=False, tables=bad)
    assert not torch.equal(got, want)


def test_backward_rejects_a_tiling_it_cannot_split(sim_binary, tmp_path):
    """BwdTiling::invalid: the mma shape must match the element size (K = 8 is tf32, 4 bytes)."""
    tiling = dict(G=1, BB=8, BH=16, WM=1, WK=4, DHP=64, P=4, K=8, elem_bytes=2)
    r = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    dg = torch.zeros(8, 1, 1, 64, dtype=torch.float64)
    with pytest.raises(AssertionError, match="K = 16 takes 16-bit"):
        _simulate(sim_binary, tmp_path, tiling, r, dg, cluster=False)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
