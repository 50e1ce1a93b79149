"""The CUDA backward kernel's index math (csrc/fused/layout_bwd.h) reassembles d(h_prev), on a CPU.

tests/kernels/cuda_layout_sim_bwd.cpp (built with g++, cached like the forward's simulation)
runs one reversed step's product for every block, warp and lane of a plan's tiling through the
functions csrc/fused/backward.cuh calls: the pointwise threads' d(rh) into shared memory, the
transposed weight fragments loaded as 32-bit pairs from the padded r, the d(rh) fragments, the
partial sums of each block and of its split reduction, and the sum of the P blocks' partials
for each block's own units (a cluster's distributed shared memory, or the fp32 global buffer).
The tensor core is emulated from the PTX lane tables of tests/kernels/test_cuda_layout.py. The
result must equal d(h_prev)[b, n, k] = sum_{g, e} d(rh)[b, g, n, e] * r[g, n, k, e] exactly
(small integer inputs), with either parity of the double-buffered partials; the simulation
fails on any element written twice or never, or outside its parity's buffer.
"""
import shutil
import subprocess
import sys

import pytest
import torch

from flashseq.kernels.fused_rnn import cuda_build
from tests.kernels.test_cuda_layout import ROOT, _plans, _ptx_tables

SIM_SOURCES = (ROOT / "tests" / "kernels" / "cuda_layout_sim_bwd.cpp",
               ROOT / "csrc" / "fused" / "layout_bwd.h", ROOT / "csrc" / "fused" / "layout.h")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host simulation")


@pytest.fixture(scope="module")
def sim_binary():
    gxx = cuda_build.find_tool("g++")

    def build(dst):
        cuda_build.run_tool([gxx, "-O2", "-std=c++17", "-Wall", "-Werror", "-o", str(dst),
                             str(SIM_SOURCES[0])])
        return {}

    path, _ = cuda_build.cached_build("cuda_layout_sim_bwd", SIM_SOURCES, ["g++ -O2"], build, "")
    return path


def _simulate(binary, tmp_path, tiling, r, dg, cluster, tables=None, parity=1):
    """d(h_prev) [B, NH, DH] (float64) as the simulated backward step forms it from d(rh)
    ``dg`` [B, G, NH, DH] and ``r`` [G, NH, DH, DH]."""
    NH, DH = r.shape[1], r.shape[2]
    B = dg.shape[0]
    tables = tables or _ptx_tables(16)
    header = [tiling[n] for n in ("G", "BB", "BH", "WM", "WK", "DHP", "P", "K", "elem_bytes")]
    ints = torch.tensor(header + [B, NH, DH, int(cluster) | (parity << 1)], dtype=torch.int32)
    tabs = [torch.tensor(tables[n], dtype=torch.int32).flatten() for n in ("a", "b", "c")]
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        for part in (ints, *tabs):
            f.write(part.numpy().tobytes())
        f.write(r.contiguous().numpy().tobytes())
        f.write(dg.contiguous().numpy().tobytes())
    done = subprocess.run([str(binary), str(inp), str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"backward layout simulation failed for {tiling}:\n{done.stderr}"
    return torch.frombuffer(bytearray(out.read_bytes()), dtype=torch.float64).view(B, NH, DH)


def _bwd_plans():
    # the backward serves 16-bit operands: the forward's bf16 tilings (tf32 ones are skipped)
    return [p for p in _plans() if p.values[1]["K"] == 16]


@pytest.mark.parametrize("head_dim, tiling, plan_cluster", _bwd_plans())
def test_backward_fragments_reassemble_dh_prev(sim_binary, tmp_path, head_dim, tiling, plan_cluster):
    """Every distinct bf16 CUDA tiling the solver picks (4 cells, H100/A100, DH 64, 256, 768 and
    40), both exchanges and both step parities, batch 13 (a partial batch tile), two heads (one at DH 768)."""
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
    """The parametrisation is not empty: DH 64, 256 and 768 each have backward tilings."""
    dims = {p.values[0] for p in _bwd_plans()}
    assert {64, 256, 768} <= dims


def test_backward_simulation_catches_a_wrong_table(sim_binary, tmp_path):
    """The check can fail: the A table with its two column halves swapped (a plausible
    transposition slip) gives a different d(h_prev)."""
    tiling = dict(G=4, BB=8, BH=16, WM=1, WK=4, DHP=64, P=4, K=16, elem_bytes=2)
    gen = torch.Generator().manual_seed(1)
    r = torch.randint(-3, 4, (4, 1, 64, 64), generator=gen).double()
    dg = torch.randint(-3, 4, (8, 4, 1, 64), generator=gen).double()
    bad = _ptx_tables(16)
    bad["a"] = [[(row, col ^ 8) for row, col in lane] for lane in bad["a"]]
    got = _simulate(sim_binary, tmp_path, tiling, r, dg, cluster=False, tables=bad)
    assert not torch.equal(got, torch.einsum("bgne,gnke->bnk", dg, r))


def test_backward_rejects_a_tiling_it_cannot_split(sim_binary, tmp_path):
    """BwdTiling::invalid: 16-bit operands only (K = 16); the simulation refuses tf32."""
    tiling = dict(G=1, BB=8, BH=16, WM=1, WK=4, DHP=64, P=4, K=8, elem_bytes=4)
    r = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    dg = torch.zeros(8, 1, 1, 64, dtype=torch.float64)
    with pytest.raises(AssertionError, match="K = 16"):
        _simulate(sim_binary, tmp_path, tiling, r, dg, cluster=False)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
