"""The CUDA kernels' index math (csrc/fused/layout.h) reassembles the right product, on a CPU.

tests/kernels/cuda_layout_sim.cpp (built with g++, cached like every compiled file of the CUDA
back end) runs one step's product for every block, warp and lane of a plan's tiling through the
same layout functions the kernels call: the h exchange into each block's shared h buffer (global
memory + barrier, or a cluster's distributed shared memory), the weight (A) and h (B) fragments,
the partial sums of the split reduction and the pointwise threads' (batch, unit) ownership. The
tensor-core instruction is emulated from the lane tables below, transcribed from the PTX ISA's
fragment figures independently of layout.h. The result must equal h @ r exactly (small integer
inputs), and the simulation fails on any element written twice or never.

The sm_90a path (wgmma) is simulated the same way for every H100 plan, 16-bit and tf32:
warpgroup-wide m64nNk16 (m64nNk8 for tf32) products, A from the lanes' registers, B = h^T read from the shared h buffer at the
addresses the PTX ISA gives for the matrix descriptor layout.h encodes (the simulation decodes
it: start address, leading and stride byte offsets, canonical K-major layout without
swizzling), D spread over the warpgroup's threads by the ISA's table below.
"""
import shutil
import sys

import pytest
import torch

from flashseq.cells import CELLS
from flashseq.kernels.fused_rnn import cuda_compile
from flashseq.kernels.fused_rnn.plan import plan_fused_rnn
from tests.kernels.cuda_test_helpers import ROOT, build_layout_sim, run_layout_sim

SIM_SOURCES = (ROOT / "tests" / "kernels" / "cuda_layout_sim.cpp",
               ROOT / "tests" / "kernels" / "cuda_layout_sim_common.h", ROOT / "csrc" / "fused" / "layout.h")
HEAD_DIMS = (64, 256, 768)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host simulation")


# ---- PTX ISA fragment tables: (row, col) of each lane's elements, lane = 4*groupID + tig -------
def _ptx_tables(k: int):
    """{'a': [32][nA] (row, col), 'b': [32][nB] (k, n), 'c': [32][4] (row, col)} for
    mma.m16n8k16 (f16/bf16, k=16) or mma.m16n8k8 (tf32, k=8)."""
    a, b, c = [], [], []
    for lane in range(32):
        group, tig = divmod(lane, 4)
        if k == 16:
            # a0 a1 | a2 a3 | a4 a5 | a6 a7 : rows g, g+8, g, g+8; cols 2t.., 2t.., 2t+8.., 2t+8..
            rows = [group, group, group + 8, group + 8, group, group, group + 8, group + 8]
            cols = [2 * tig, 2 * tig + 1] * 2 + [2 * tig + 8, 2 * tig + 9] * 2
            a.append(list(zip(rows, cols)))
            b.append([(2 * tig, group), (2 * tig + 1, group), (2 * tig + 8, group), (2 * tig + 9, group)])
        else:
            a.append([(group, tig), (group + 8, tig), (group, tig + 4), (group + 8, tig + 4)])
            b.append([(tig, group), (tig + 4, group)])
        c.append([(group, 2 * tig), (group, 2 * tig + 1), (group + 8, 2 * tig), (group + 8, 2 * tig + 1)])
    return {"a": a, "b": b, "c": c}


def _wgmma_tables(n: int, k: int = 16):
    """{'a': [128][k/2] (row, col) of A (64 x k), 'd': [128][n/2] (row, col) of D (64 x n)} for
    wgmma.m64nNk16 with 16-bit A in registers (k=16), or wgmma.m64nNk8 with tf32 A in registers
    (k=8) (PTX ISA, "Register fragments" of wgmma .m64nNk16 / .m64nNk8): thread = 32 * warp +
    4 * groupID + tig, warp = 0..3 of the warpgroup."""
    a, d = [], []
    for thread in range(128):
        warp, lane = divmod(thread, 32)
        group, tig = divmod(lane, 4)
        top = 16 * warp + group
        if k == 16:
            # a0 a1 (row top, cols 2t, 2t+1), a2 a3 (top+8), a4 a5 (top, cols +8), a6 a7 (top+8, +8)
            rows = [top, top, top + 8, top + 8] * 2
            cols = [2 * tig, 2 * tig + 1] * 2 + [2 * tig + 8, 2 * tig + 9] * 2
        else:
            # tf32: a0 (row top, col t), a1 (top+8, t), a2 (top, t+4), a3 (top+8, t+4)
            rows = [top, top + 8, top, top + 8]
            cols = [tig, tig, tig + 4, tig + 4]
        a.append(list(zip(rows, cols)))
        # D: per 8 columns, d(4j) d(4j+1) at row top, d(4j+2) d(4j+3) at top+8; cols 8j + 2t (+1)
        d.append([(top + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * tig + i % 2) for i in range(n // 2)])
    return {"a": a, "d": d}


def test_ptx_tables_cover_each_operand_once():
    """The transcription itself: every element of A, B and C held by exactly one lane."""
    for k in (16, 8):
        t = _ptx_tables(k)
        for name, shape in (("a", (16, k)), ("b", (k, 8)), ("c", (16, 8))):
            seen = torch.zeros(shape, dtype=torch.int64)
            for lane in t[name]:
                for row, col in lane:
                    seen[row, col] += 1
            assert bool((seen == 1).all()), (k, name)
    for n, k in ((8, 16), (16, 16), (8, 8), (16, 8)):
        t = _wgmma_tables(n, k)
        for name, shape in (("a", (64, k)), ("d", (64, n))):
            seen = torch.zeros(shape, dtype=torch.int64)
            for thread in t[name]:
                for row, col in thread:
                    seen[row, col] += 1
            assert bool((seen == 1).all()), (n, k, name)


@pytest.fixture(scope="module")
def sim_binary():
    return build_layout_sim("cuda_layout_sim", SIM_SOURCES)


def _tiling(plan, gmma=0):
    k = 8 if plan.dtype in ("tf32", "float32") else 16
    return dict(G=CELLS[plan.cell].num_gates, BB=plan.BB, BH=plan.BH, WM=plan.warps_m,
                WK=plan.warps_n, DHP=plan.padded_head_dim, P=plan.programs_per_head, K=k,
                elem_bytes=4 if k == 8 else 2, gmma=gmma)


def _simulate(binary, tmp_path, tiling, r, h, cluster):
    """rh [B, G, NH, DH] (float64) as the simulated kernel computes it."""
    G, NH, DH = r.shape[0], r.shape[1], r.shape[2]
    B = h.shape[0]
    header = [tiling[n] for n in ("G", "BB", "BH", "WM", "WK", "DHP", "P", "K", "elem_bytes")]
    if tiling.get("gmma", 0):
        tables, names = _wgmma_tables(tiling["BB"], tiling["K"]), ("a", "d")
    else:
        tables, names = _ptx_tables(tiling["K"]), ("a", "b", "c")
    return run_layout_sim(binary, tmp_path, header + [B, NH, DH, int(cluster), tiling.get("gmma", 0)],
                          tables, names, (r, h), (B, G, NH, DH), f"layout simulation for {tiling}")


def _plans():
    cases = {}
    for cell in sorted(CELLS):
        for gpu in ("h100", "a100"):
            for dtype in ("bfloat16", "tf32"):
                for dh in (*HEAD_DIMS, 40):
                    plan = plan_fused_rnn(cell, 16, 1, dh, dtype, gpu, backend="cuda")
                    assert plan.path in ("fused", "split"), plan
                    key = (dh, tuple(sorted(_tiling(plan).items())), plan.cluster_size > 1)
                    cases.setdefault(key, f"{cell}-{gpu}-{dtype}-DH{dh}")
                    if gpu == "h100" and cuda_compile.wgmma_serves(plan):  # sm_90a: wgmma
                        key = (dh, tuple(sorted(_tiling(plan, gmma=1).items())), plan.cluster_size > 1)
                        cases.setdefault(key, f"{cell}-{gpu}-{dtype}-DH{dh}-wgmma")
    return [pytest.param(dh, dict(t), clus, id=name) for (dh, t, clus), name in cases.items()]


@pytest.mark.parametrize("head_dim, tiling, plan_cluster", _plans())
def test_fragments_reassemble_the_product(sim_binary, tmp_path, head_dim, tiling, plan_cluster):
    """Every distinct CUDA tiling the solver picks (4 cells, H100/A100, bf16/tf32, DH 64, 256,
    768 and 40, which pads to 48; the H100 plans, bf16 and tf32, also on the wgmma path) with both
    exchanges, batch 13 (a partial batch tile) and two heads (one at DH 768, to keep the inputs
    small)."""
    gen = torch.Generator().manual_seed(head_dim * 7919 + tiling["BH"] * 31 + tiling["WK"])
    heads = 1 if head_dim == 768 else 2
    G, B = tiling["G"], 13
    r = torch.randint(-3, 4, (G, heads, head_dim, head_dim), generator=gen).double()
    h = torch.randint(-3, 4, (B, heads, head_dim), generator=gen).double()
    want = torch.einsum("bnk,gnke->bgne", h, r)
    for cluster in (False, True):
        got = _simulate(sim_binary, tmp_path, tiling, r, h, cluster)
        assert torch.equal(got, want), (f"cluster={cluster}: {int((got != want).sum())} of "
                                        f"{want.numel()} elements differ")
    # a layout that only looked right on zeros would not get here: the product is dense
    assert int((want != 0).sum()) > want.numel() // 2


# Sizes whose forward plans are of kinds the DH list above does not reach: DHP 16 (one tile),
# BB 32 and 64, and 11 or 13 blocks per head over a DHP that is not a power of two (the sizes
# of the backward's mma.sync-fallback and wider-padding plans, test_cuda_layout_bwd.py)
FORWARD_EXTRA_SIZES = [
    ("gru", 16, 1, 16, "bfloat16", "h100"), ("elman", 16, 1, 16, "tf32", "h100"),
    ("gru", 16, 1, 8, "tf32", "h100"), ("lstm", 64, 4, 200, "bfloat16", "h100"),
    ("lstm", 64, 4, 176, "tf32", "a100"), ("lstm", 64, 4, 208, "tf32", "h100"),
    ("lstm", 256, 2, 176, "bfloat16", "a100"), ("lstm", 64, 4, 99, "bfloat16", "a100"),
]


@pytest.mark.parametrize("size", FORWARD_EXTRA_SIZES, ids=lambda s: "-".join(map(str, s)))
def test_fragments_reassemble_the_product_beyond_the_dh_list(sim_binary, tmp_path, size):
    """The forward plans at those sizes (on wgmma too where the sm_90a build serves them): each
    a tiling the DH list does not have, simulated with both exchanges, a partial last batch tile
    and two heads."""
    plan = plan_fused_rnn(*size, backend="cuda")
    assert plan.path in ("fused", "split"), plan
    listed = {(p.values[0], tuple(sorted(p.values[1].items()))) for p in _plans()}
    dh = size[3]
    tilings = [_tiling(plan)] + ([_tiling(plan, gmma=1)] if cuda_compile.wgmma_serves(plan) else [])
    assert (dh, tuple(sorted(tilings[0].items()))) not in listed, "already covered: pick another size"
    gen = torch.Generator().manual_seed(dh * 13 + plan.BB)
    B = 2 * plan.BB - 3
    r = torch.randint(-3, 4, (tilings[0]["G"], 2, dh, dh), generator=gen).double()
    h = torch.randint(-3, 4, (B, 2, dh), generator=gen).double()
    want = torch.einsum("bnk,gnke->bgne", h, r)
    for tiling in tilings:
        for cluster in (False, True):
            got = _simulate(sim_binary, tmp_path, tiling, r, h, cluster)
            assert torch.equal(got, want), (f"{tiling} cluster={cluster}: "
                                            f"{int((got != want).sum())} elements differ")
    assert int((want != 0).sum()) > want.numel() // 2


def test_simulation_catches_a_wrong_table(sim_binary, tmp_path, monkeypatch):
    """The check can fail: swapping the two row halves of the PTX A table (a plausible
    transcription error) makes the simulated product differ from h @ r."""
    tiling = dict(G=4, BB=8, BH=16, WM=1, WK=4, DHP=64, P=4, K=16, elem_bytes=2)
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(-3, 4, (4, 1, 64, 64), generator=gen).double()
    h = torch.randint(-3, 4, (8, 1, 64), generator=gen).double()
    good = _ptx_tables

    def bad(k):
        t = good(k)
        t["a"] = [[(row ^ 8, col) for row, col in lane] for lane in t["a"]]
        return t

    monkeypatch.setattr(sys.modules[__name__], "_ptx_tables", bad)
    got = _simulate(sim_binary, tmp_path, tiling, r, h, cluster=False)
    assert not torch.equal(got, torch.einsum("bnk,gnke->bgne", h, r))


@pytest.mark.parametrize("k", [16, 8], ids=["16bit", "tf32"])
@pytest.mark.parametrize("fault", ["a_rows", "a_cols", "d_rows"])
def test_simulation_catches_a_wrong_wgmma_table(sim_binary, tmp_path, monkeypatch, fault, k):
    """The wgmma check can fail, for m64nNk16 (16-bit) and m64nNk8 (tf32): exchanging the row
    blocks of two warps in the A table, its two column halves (for tf32: a2/a3 taken for a1/a2,
    the m16n8k16 habit), or the two 8-row halves of the D table, makes the simulated product
    differ from h @ r."""
    tiling = dict(G=4, BB=8, BH=32, WM=1, WK=4, DHP=256, P=8, K=k, elem_bytes=32 // k, gmma=1)
    gen = torch.Generator().manual_seed(1)
    r = torch.randint(-3, 4, (4, 1, 256, 256), generator=gen).double()
    h = torch.randint(-3, 4, (8, 1, 256), generator=gen).double()
    good = _wgmma_tables

    def bad(n, kk):
        t = good(n, kk)
        if fault == "a_rows":
            t["a"] = [[(row ^ 16, col) for row, col in th] for th in t["a"]]
        elif fault == "a_cols":
            t["a"] = [[(row, col ^ (kk // 2)) for row, col in th] for th in t["a"]]
        else:
            t["d"] = [[(row ^ 8, col) for row, col in th] for th in t["d"]]
        return t

    want = torch.einsum("bnk,gnke->bgne", h, r)
    assert torch.equal(_simulate(sim_binary, tmp_path, tiling, r, h, cluster=True), want)
    monkeypatch.setattr(sys.modules[__name__], "_wgmma_tables", bad)
    assert not torch.equal(_simulate(sim_binary, tmp_path, tiling, r, h, cluster=True), want)
