// Host simulation of one reversed step's product in the persistent CUDA backward kernel, built
// with g++ by tests/kernels/test_cuda_layout_bwd.py. Every block, warp and lane runs the index
// functions of csrc/fused/layout_bwd.h exactly as csrc/fused/backward.cuh calls them: the
// pointwise threads' d(rh) into the shared buffer, the weight fragments loaded as 32-bit pairs
// from the zero-padded r, the d(rh) fragments read as 32-bit pairs from shared memory, the
// partial sums into the parity buffers, and the meeting of the P blocks' partials (a cluster's
// distributed shared memory, or the fp32 global buffer). The tensor-core instruction itself is
// emulated from lane tables the Python test transcribes from the PTX documentation.
// With gmma = 1 (the sm_90a wgmma path) the product is one warpgroup-wide m64nNkK per (m tile
// of 64 rows k, k step of K gate columns; K = 16 for 16-bit, 8 for tf32): A from the lanes' registers as the kernel loads
// them, B = d(rh)^T read from the shared d(rh) buffer at the addresses the PTX ISA's matrix
// descriptor rules give for the descriptor layout_bwd.h encodes (decoded here by
// wgmma_b_address, written from the ISA, not from layout_bwd.h), D scattered to the threads by
// the Python tables.
// Output: dh[b, n, k] = sum_{g, e} dg[b, g, n, e] * r[g, n, k, e] as the kernel would form it;
// a nonzero exit code and a message when an element is written twice or never.
//
// Usage: cuda_layout_sim_bwd <input file> <output file>. Input (little-endian):
//   int32 G BB BH WM WK DHP P K elem_bytes B NH DH mode gmma RDHP
//   mode bit 0: cluster exchange, else global; bit 1: the step's parity, which double buffer the
//   partial sums use; bit 2: r's padding (rows k and units e past DH) holds nonzero garbage
//   instead of zeros (the kernel must not depend on it: d(rh) of the units past DH is zero and
//   their rows of d(h_prev) are never gathered); bit 3: fault injection, the pointwise threads'
//   d(rh) of the units past DH not masked (nonzero). RDHP: the padding of the r the host
//   builds (cuda_function pads to the backward's DHP; a smaller one is a fault, the reads
//   are bounds-checked)
//   gmma == 0: int32 a_tab[32][K/2][2], b_tab[32][K/4][2], c_tab[32][4][2]  (row, col) per lane
//   (K = 16: m16n8k16; K = 8: tf32 m16n8k8)
//   gmma == 1: int32 a_tab[128][K/2][2], d_tab[128][BB/2][2]  (row, col) per warpgroup thread
//   (K = 16: m64nNk16; K = 8: tf32 m64nNk8)
//   float64 r[G][NH][DH][DH], dg[B][G][NH][DH]
// Output: float64 dh[B][NH][DH].
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../csrc/fused/layout_bwd.h"
#include "cuda_layout_sim_common.h"

using flashseq::fused::BatchUnit;
using flashseq::fused::BwdTiling;
using flashseq::fused::GateUnit;
using flashseq::fused::RowCol;
using flashseq::fused::Tiling;

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  int hdr[15];
  read(in, hdr, 15);
  const Tiling ft{hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7], hdr[8], hdr[13]};
  const BwdTiling t = BwdTiling::of(ft);
  const int B = hdr[9], NH = hdr[10], DH = hdr[11], cluster = hdr[12] & 1;
  if (const char* why = t.invalid()) {
    std::fprintf(stderr, "invalid tiling: %s\n", why);
    return 3;
  }
  const int kD = ft.BB / 2;  // wgmma D elements per thread and m tile
  std::vector<int> a_tab, b_tab, c_tab, ga_tab, gd_tab;
  if (ft.gmma) {
    ga_tab.resize(128 * (ft.K / 2) * 2);  // 64 x K elements over 128 threads
    gd_tab.resize(128 * kD * 2);
    read(in, ga_tab.data(), ga_tab.size());
    read(in, gd_tab.data(), gd_tab.size());
  } else {
    a_tab.resize(32 * (ft.K / 2) * 2);
    b_tab.resize(32 * (ft.K / 4) * 2);
    c_tab.resize(32 * 4 * 2);
    read(in, a_tab.data(), a_tab.size());
    read(in, b_tab.data(), b_tab.size());
    read(in, c_tab.data(), c_tab.size());
  }
  const int G = ft.G, DHP = ft.DHP, BB = ft.BB, BH = ft.BH, P = ft.P;
  std::vector<double> r(static_cast<size_t>(G) * NH * DH * DH), dg(static_cast<size_t>(B) * G * NH * DH);
  read(in, r.data(), r.size());
  read(in, dg.data(), dg.size());
  std::fclose(in);

  // the padded r [G][NH][RD][RD] cuda_function builds (not transposed; RD = the backward's DHP
  // there): zeros past DH, or garbage (mode bit 2) that the masks must keep out of the result
  const int RD = hdr[14], poison = (hdr[12] >> 2) & 1, unmasked = (hdr[12] >> 3) & 1;
  if (RD < DH) return 2;
  std::vector<double> rp(static_cast<size_t>(G) * NH * RD * RD, 0.0);
  for (int g = 0; g < G; ++g)
    for (int n = 0; n < NH; ++n)
      for (int k = 0; k < RD; ++k)
        for (int e = 0; e < RD; ++e)
          rp[((static_cast<size_t>(g) * NH + n) * RD + k) * RD + e] =
              k < DH && e < DH ? r[((static_cast<size_t>(g) * NH + n) * DH + k) * DH + e]
                               : poison ? 5.0 + (k * 7 + e * 3 + g) % 5 : 0.0;
  auto r_at = [&rp](long long off) {
    if (off < 0 || off >= static_cast<long long>(rp.size())) {
      fail("weight load outside the padded r", off, 0);
      return 0.0;
    }
    return rp[off];
  };

  const int tiles_b = (B + BB - 1) / BB, padded_b = tiles_b * BB;
  const int parity = (hdr[12] >> 1) & 1;  // the step's (i & 1); the gather reads the same buffer
  const int W = t.warps(), MT = t.m_tiles(), KT = t.k_tiles(), NT = t.n_tiles();
  // every block's shared partial buffers [2][WKB][BB][part_stride], indexed by block
  const int n_blocks_x = NH * P;
  std::vector<std::vector<double>> part(static_cast<size_t>(n_blocks_x) * tiles_b,
                                        std::vector<double>(2 * t.part_buffer_elems(), -1e300));
  std::vector<std::vector<int>> part_count(part.size(), std::vector<int>(2 * t.part_buffer_elems(), 0));

  for (int by = 0; by < tiles_b; ++by)
    for (int bx = 0; bx < n_blocks_x; ++bx) {
      const int head = ft.block_head(bx), slice = ft.block_slice(bx);
      // 1. pointwise threads put d(rh) of their (batch, unit) elements into shared memory
      std::vector<double> sDg(t.dg_elems(), -1e300);
      std::vector<int> dg_count(t.dg_elems(), 0);
      const int EL = ft.elems_per_thread();
      for (int tid = 0; tid < t.threads(); ++tid)
        for (int j = 0; j < EL; ++j) {
          if (!ft.elem_valid(tid, j)) continue;
          const BatchUnit e = ft.elem(tid, j);
          const int bg = ft.batch_row(by, e.b), unit = ft.head_unit(slice, e.unit);
          const bool live = bg < B && unit < DH;
          for (int g = 0; g < G; ++g) {
            const int off = t.dg_offset(e.b, g * BH + e.unit);
            sDg[off] = live ? dg[((static_cast<size_t>(bg) * G + g) * NH + head) * DH + unit]
                       : unmasked && bg < B ? 1.0 : 0.0;
            dg_count[off]++;
          }
        }
      for (int b = 0; b < BB; ++b)
        for (int col = 0; col < t.cols(); ++col)
          if (dg_count[t.dg_offset(b, col)] != 1) fail("d(rh) buffer", t.dg_offset(b, col), dg_count[t.dg_offset(b, col)]);

      // 2. each warp's fragments and its emulated mma
      std::vector<double>& sPart = part[static_cast<size_t>(by) * n_blocks_x + bx];
      std::vector<int>& pcount = part_count[static_cast<size_t>(by) * n_blocks_x + bx];
      if (ft.gmma) {
        // 2'. wgmma: the d(rh) buffer at a nonzero shared-memory address, so that the
        // descriptor's start field counts; every weight register loaded exactly once
        const unsigned base = 2048;
        std::vector<int> a_count(static_cast<size_t>(t.g_m_tiles()) * 64 * t.cols(), 0);
        for (int wg = 0; wg < ft.warpgroups(); ++wg)
          for (int mt = 0; mt < t.g_wg_m_tiles(); ++mt) {
            std::vector<double> D(64 * BB, 0.0);
            for (int kt = 0; kt < t.g_k_steps(); ++kt) {
              double A[64][16] = {};
              int a_seen[64][16] = {};
              // elements per 32-bit register: 2 (16-bit), 1 (tf32); per thread: K / 2
              const int per = ft.K == 16 ? 2 : 1, kGA = ft.K / 2;
              for (int th = 0; th < 128; ++th) {
                const int warp = 4 * wg + th / 32, lane = th % 32;
                for (int reg = 0; reg < 4; ++reg) {
                  // as backward.cuh loads it: one 32-bit word at row row8 + lane/4, columns
                  // col8 + per*(lane%4) (+ 0/1: adjacent units of one gate); rows past DHP zero
                  const int row8 = t.g_a_pair_row8(warp, mt, reg), row = row8 + (lane >> 2);
                  const int col8 = t.g_a_pair_col8(warp, kt, reg);
                  const GateUnit gu = t.col_gate_unit(col8);
                  if (row8 % 8 != 0 || col8 % (4 * per) != 0 || gu.unit + 4 * per > BH)
                    fail("wgmma A register (row8, col8 in one gate)", reg, 0);
                  const bool live = row8 < DHP;
                  const long long off =
                      t.r_offset(NH, head, slice, gu.gate, live ? row : 0, gu.unit + per * (lane & 3));
                  for (int h = 0; h < per; ++h) {
                    const int i = per * reg + h;
                    const RowCol rc = t.g_a_elem(warp, mt, kt, lane, i);
                    if (rc.row != row || rc.col != col8 + per * (lane & 3) + h)
                      fail("wgmma A element vs its register's address", i, 0);
                    if (live) a_count[static_cast<size_t>(rc.row) * t.cols() + rc.col]++;
                    const int tr = ga_tab[(th * kGA + i) * 2], tc = ga_tab[(th * kGA + i) * 2 + 1];
                    A[tr][tc] = live ? r_at(off + h) : 0.0;
                    a_seen[tr][tc]++;
                  }
                }
              }
              for (int x = 0; x < 64; ++x)
                for (int y = 0; y < ft.K; ++y)
                  if (a_seen[x][y] != 1) fail("wgmma A tile", x * 16 + y, a_seen[x][y]);
              const unsigned long long desc = t.g_desc_b(base, t.g_wk(4 * wg), kt);
              const int eb = ft.elem_bytes;
              for (int k = 0; k < ft.K; ++k)
                for (int n = 0; n < BB; ++n) {
                  const long long addr = wgmma_b_address(desc, k, n, eb) - base;
                  if (addr < 0 || addr % eb != 0 || addr / eb >= t.dg_elems()) {
                    fail("wgmma B address outside the d(rh) buffer", addr, 0);
                    continue;
                  }
                  for (int row = 0; row < 64; ++row) D[row * BB + n] += A[row][k] * sDg[addr / eb];
                }
            }
            for (int th = 0; th < 128; ++th) {
              const int warp = 4 * wg + th / 32, lane = th % 32;
              for (int i = 0; i < kD; ++i) {
                const double v = D[gd_tab[(th * kD + i) * 2] * BB + gd_tab[(th * kD + i) * 2 + 1]];
                if (t.g_c_elem(warp, mt, lane, i).row >= DHP) continue;  // padding rows
                const int off = t.g_c_smem_offset(parity, warp, mt, lane, i);
                if (off / t.part_buffer_elems() != parity)
                  fail("partial sums outside the parity's buffer", off, 0);
                sPart[off] = v;
                pcount[off]++;
              }
            }
          }
        for (int k = 0; k < DHP; ++k)
          for (int col = 0; col < t.cols(); ++col)
            if (a_count[static_cast<size_t>(k) * t.cols() + col] != 1)
              fail("wgmma weight loaded", static_cast<long long>(k) * t.cols() + col,
                   a_count[static_cast<size_t>(k) * t.cols() + col]);
      }
      for (int warp = 0; warp < (ft.gmma ? 0 : W); ++warp)
        for (int mt = 0; mt < MT; ++mt)
          for (int nt = 0; nt < NT; ++nt) {
            double acc[32][4] = {};
            for (int kt = 0; kt < KT; ++kt) {
              // A registers as the kernel loads them: one 32-bit word per register, 16-bit: the
              // pair (2reg, 2reg+1) of adjacent units; tf32: element reg
              const int K = ft.K, epr = K / 8, nA = K / 2, nB = K / 4;
              double Atile[16][16], Btile[16][8];
              int a_seen[16][16] = {}, b_seen[16][8] = {};
              for (int lane = 0; lane < 32; ++lane) {
                for (int reg = 0; reg < 4; ++reg) {
                  const int row = t.a_pair_row8(warp, mt, reg) + (lane >> 2);
                  const GateUnit gu = t.col_gate_unit(t.a_pair_col8(warp, kt, reg));
                  const long long off =
                      t.r_offset(NH, head, slice, gu.gate, row, gu.unit + t.a_lane_col(lane));
                  for (int h = 0; h < epr; ++h) {
                    const int i = epr * reg + h;
                    const int tr = a_tab[(lane * nA + i) * 2], tc = a_tab[(lane * nA + i) * 2 + 1];
                    Atile[tr][tc] = r_at(off + h);
                    a_seen[tr][tc]++;
                  }
                }
                // B: 16-bit, 32-bit pairs at elements 0 and 2; tf32, elements 0 and 1
                for (int pr = 0; pr < 2; ++pr) {
                  const int off = t.b_smem_offset(warp, nt, kt, lane, pr * t.b_regs_step());
                  for (int h = 0; h < epr; ++h) {
                    const int i = epr * pr + h;
                    const int tk = b_tab[(lane * nB + i) * 2], tn = b_tab[(lane * nB + i) * 2 + 1];
                    Btile[tk][tn] = sDg[off + h];
                    b_seen[tk][tn]++;
                  }
                }
              }
              for (int x = 0; x < 16; ++x)
                for (int y = 0; y < K; ++y)
                  if (a_seen[x][y] != 1) fail("A tile", x * 16 + y, a_seen[x][y]);
              for (int x = 0; x < K; ++x)
                for (int y = 0; y < 8; ++y)
                  if (b_seen[x][y] != 1) fail("B tile", x * 8 + y, b_seen[x][y]);
              for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 4; ++i) {
                  const int cr = c_tab[(lane * 4 + i) * 2], cc = c_tab[(lane * 4 + i) * 2 + 1];
                  double s = 0.0;
                  for (int kk = 0; kk < K; ++kk) s += Atile[cr][kk] * Btile[kk][cc];
                  acc[lane][i] += s;
                }
            }
            for (int lane = 0; lane < 32; ++lane)
              for (int i = 0; i < 4; ++i) {
                const int off = t.c_smem_offset(parity, warp, mt, nt, lane, i);
                if (off / t.part_buffer_elems() != parity) fail("partial sums outside the parity's buffer", off, 0);
                sPart[off] = acc[lane][i];
                pcount[off]++;
              }
          }
      for (int wk = 0; wk < t.k_slices(); ++wk)
        for (int b = 0; b < BB; ++b)
          for (int k = 0; k < DHP; ++k) {
            const int off = t.part_offset(parity, wk, b, k);
            if (pcount[off] != 1) fail("partial sums", off, pcount[off]);
          }
    }

  // 3. the global exchange: each block publishes its WKB-summed partial [BB][DHP]
  std::vector<double> xpart(static_cast<size_t>(t.xpart_elems(NH, padded_b)), -1e300);
  std::vector<int> xcount(xpart.size(), 0);
  if (!cluster && P > 1)
    for (int by = 0; by < tiles_b; ++by)
      for (int bx = 0; bx < n_blocks_x; ++bx) {
        const std::vector<double>& sPart = part[static_cast<size_t>(by) * n_blocks_x + bx];
        for (int idx = 0; idx < BB * DHP; ++idx) {
          const int b = idx / DHP, k = idx % DHP;
          double s = 0.0;
          for (int wk = 0; wk < t.k_slices(); ++wk) s += sPart[t.part_offset(parity, wk, b, k)];
          const long long off = t.xpart_offset(parity, NH, padded_b, ft.block_head(bx), ft.block_slice(bx),
                                               ft.batch_row(by, b), k);
          if (off / (t.xpart_elems(NH, padded_b) / 2) != parity) fail("exchange outside the parity's half", off, 0);
          xpart[off] = s;
          xcount[off]++;
        }
      }

  // 4. the gather of each block's own units (the next step's pointwise threads)
  std::vector<double> out(static_cast<size_t>(B) * NH * DH, 0.0);
  std::vector<int> out_count(out.size(), 0);
  for (int by = 0; by < tiles_b; ++by)
    for (int bx = 0; bx < n_blocks_x; ++bx) {
      const int head = ft.block_head(bx), slice = ft.block_slice(bx);
      for (int tid = 0; tid < t.threads(); ++tid)
        for (int j = 0; j < ft.elems_per_thread(); ++j) {
          if (!ft.elem_valid(tid, j)) continue;
          const BatchUnit e = ft.elem(tid, j);
          const int bg = ft.batch_row(by, e.b), unit = ft.head_unit(slice, e.unit);
          if (bg >= B || unit >= DH) continue;
          const int k = t.own_row(slice, e.unit);
          double s = 0.0;
          if (P == 1) {
            const std::vector<double>& sPart = part[static_cast<size_t>(by) * n_blocks_x + bx];
            for (int wk = 0; wk < t.k_slices(); ++wk) s += sPart[t.part_offset(parity, wk, e.b, k)];
          } else if (cluster) {
            for (int peer = 0; peer < P; ++peer) {
              // the peer of rank `peer` in this head's cluster: block head*P + peer of this tile
              const std::vector<double>& pp = part[static_cast<size_t>(by) * n_blocks_x + head * P + peer];
              for (int wk = 0; wk < t.k_slices(); ++wk) s += pp[t.part_offset(parity, wk, e.b, k)];
            }
          } else {
            for (int peer = 0; peer < P; ++peer) {
              const long long off = t.xpart_offset(parity, NH, padded_b, head, peer, bg, k);
              if (xcount[off] != 1) fail("exchange read", off, xcount[off]);
              s += xpart[off];
            }
          }
          const size_t o = (static_cast<size_t>(bg) * NH + head) * DH + unit;
          out[o] = s;
          out_count[o]++;
        }
    }
  expect_once("d(h_prev)", out_count);

  FILE* f = std::fopen(argv[2], "wb");
  if (!f) return 2;
  std::fwrite(out.data(), sizeof(double), out.size(), f);
  std::fclose(f);
  if (failures) std::fprintf(stderr, "%d layout failures\n", failures);
  return failures ? 1 : 0;
}
