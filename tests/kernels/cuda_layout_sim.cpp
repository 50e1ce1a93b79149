// Host simulation of one step's product in the persistent CUDA kernels, built with g++ by
// tests/kernels/test_cuda_layout.py. Every block, warp and lane runs the index functions of
// csrc/fused/layout.h exactly as the kernels call them (h exchange into the shared h buffer,
// weight fragments, h fragments, partial sums, pointwise ownership); the tensor-core instruction
// itself is emulated from lane tables the Python test transcribes independently from the PTX
// documentation. Output: rh[b, g, n, e] = sum_k h[b, n, k] * r[g, n, k, e] as the kernel would
// see it, plus a nonzero exit code and a message when an element is written twice or never.
//
// With gmma = 1 (the sm_90a wgmma path) the product is one warpgroup-wide m64nNkK per (m tile,
// k step; K = 16 for 16-bit, K = 8 for tf32): A from the lanes' registers (layout.h), B read from the shared h buffer through the
// matrix descriptor layout.h encodes, decoded here by the PTX ISA's rules (wgmma_read_b below,
// written from the ISA, not from layout.h), D scattered to the threads by the Python tables.
//
// Usage: cuda_layout_sim <input file> <output file>. Input (little-endian):
//   int32 G BB BH WM WK DHP P K elem_bytes B NH DH mode(0: global exchange, 1: cluster) gmma
//   gmma == 0: int32 a_tab[32][A][2], b_tab[32][Bn][2], c_tab[32][4][2]  (row, col) per lane
//   gmma == 1: int32 a_tab[128][K/2][2], d_tab[128][BB/2][2]  (row, col) per warpgroup thread
//   (K = 16: m64nNk16; K = 8: tf32 m64nNk8)
//   float64 r[G][NH][DH][DH], h[B][NH][DH]
// Output: float64 rh[B][G][NH][DH].
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../csrc/fused/layout.h"
#include "cuda_layout_sim_common.h"

using flashseq::fused::RowCol;
using flashseq::fused::Tiling;

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  int hdr[14];
  read(in, hdr, 14);
  const Tiling t{hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7], hdr[8], hdr[13]};
  const int B = hdr[9], NH = hdr[10], DH = hdr[11], cluster = hdr[12];
  if (const char* why = t.invalid()) {
    std::fprintf(stderr, "invalid tiling: %s\n", why);
    return 3;
  }
  const int kA = t.K / 2, kB = t.K / 4;  // elements per lane: 8/4 (k16), 4/2 (k8)
  const int kD = t.BB / 2;  // wgmma D elements per thread and m tile
  std::vector<int> a_tab, b_tab, c_tab, ga_tab, gd_tab;
  if (t.gmma) {
    ga_tab.resize(128 * kA * 2);  // 64 x K elements over 128 threads: K / 2 each
    gd_tab.resize(128 * kD * 2);
    read(in, ga_tab.data(), ga_tab.size());
    read(in, gd_tab.data(), gd_tab.size());
  } else {
    a_tab.resize(32 * kA * 2);
    b_tab.resize(32 * kB * 2);
    c_tab.resize(32 * 4 * 2);
    read(in, a_tab.data(), a_tab.size());
    read(in, b_tab.data(), b_tab.size());
    read(in, c_tab.data(), c_tab.size());
  }
  const int G = t.G;
  std::vector<double> r(static_cast<size_t>(G) * NH * DH * DH), h(static_cast<size_t>(B) * NH * DH);
  read(in, r.data(), r.size());
  read(in, h.data(), h.size());
  std::fclose(in);
  auto R = [&](int g, int n, int k, int e) { return r[((static_cast<size_t>(g) * NH + n) * DH + k) * DH + e]; };

  const int tiles_b = (B + t.BB - 1) / t.BB, padded_b = tiles_b * t.BB;
  std::vector<double> out(static_cast<size_t>(B) * G * NH * DH, 0.0);
  std::vector<int> out_count(out.size(), 0);
  // the exchange buffer of global memory (both parities; step 0 writes parity 0)
  std::vector<double> xchg(static_cast<size_t>(2) * NH * padded_b * t.DHP, -1e300);
  const int parity = 0;

  // Step "t-1": every block publishes its h slice (pointwise ownership -> exchange offsets).
  std::vector<int> xchg_count(xchg.size(), 0);
  for (int by = 0; by < tiles_b; ++by)
    for (int bx = 0; bx < NH * t.P; ++bx)
      for (int tid = 0; tid < t.threads(); ++tid)
        for (int j = 0; j < t.elems_per_thread(); ++j) {
          if (!t.elem_valid(tid, j)) continue;
          const auto e = t.elem(tid, j);
          const int n = t.block_head(bx), unit = t.head_unit(t.block_slice(bx), e.unit);
          const int bg = t.batch_row(by, e.b);
          const double v = (bg < B && unit < DH) ? h[(static_cast<size_t>(bg) * NH + n) * DH + unit] : 0.0;
          const long long o = t.xchg_offset(parity, NH, padded_b, n, bg, unit);
          xchg[o] = v;
          xchg_count[o]++;
        }
  {
    std::vector<int> used(xchg_count.begin(), xchg_count.begin() + xchg.size() / 2);
    expect_once("exchange buffer", used);
  }

  for (int by = 0; by < tiles_b; ++by)
    for (int bx = 0; bx < NH * t.P; ++bx) {
      const int n = t.block_head(bx), slice = t.block_slice(bx);
      // the block's shared h buffer, filled from global memory or (cluster) by its peers
      std::vector<double> sh(t.h_buffer_elems(), -1e300);
      std::vector<int> sh_count(sh.size(), 0);
      if (cluster) {
        // each block of the head first fills its own slice of its own buffer ...
        std::vector<std::vector<double>> peer(t.P, std::vector<double>(t.h_buffer_elems(), -1e300));
        for (int src = 0; src < t.P; ++src)
          for (int tid = 0; tid < t.threads(); ++tid)
            for (int j = 0; j < t.elems_per_thread(); ++j) {
              if (!t.elem_valid(tid, j)) continue;
              const auto e = t.elem(tid, j);
              const int unit = t.head_unit(src, e.unit), bg = t.batch_row(by, e.b);
              const double v = (bg < B && unit < DH) ? h[(static_cast<size_t>(bg) * NH + n) * DH + unit] : 0.0;
              peer[src][t.dsmem_offset(src, e.b, e.unit)] = v;
            }
        // ... then pulls the other slices from its peers, piece by piece
        for (int i = 0; i < t.pieces(); ++i) {
          const RowCol bk = t.piece(i);
          const int owner = t.piece_owner(bk.col);
          for (int q = 0; q < t.piece_elems(); ++q) {
            const int o = t.h_offset(bk.row, bk.col + q);
            // the kernel copies a piece as one 16-byte word: contiguous in shared memory
            if (o != t.h_offset(bk.row, bk.col) + q) fail("piece not contiguous in shared memory", i, 0);
            sh[o] = peer[owner][o];
            sh_count[o]++;
            if (t.piece_owner(bk.col + q) != owner) fail("piece straddles two slices", i, 2);
          }
        }
      } else {
        const long long tile = t.xchg_offset(parity, NH, padded_b, n, t.batch_row(by, 0), 0);
        for (int i = 0; i < t.pieces(); ++i) {
          const RowCol bk = t.piece(i);
          for (int q = 0; q < t.piece_elems(); ++q) {
            const int o = t.h_offset(bk.row, bk.col + q);
            if (o != t.h_offset(bk.row, bk.col) + q) fail("piece not contiguous in shared memory", i, 0);
            // the kernel reads the tile's rows as one contiguous [BB, DHP] block
            if (tile + bk.row * t.DHP + bk.col + q !=
                t.xchg_offset(parity, NH, padded_b, n, t.batch_row(by, bk.row), bk.col + q))
              fail("exchange tile not contiguous", i, 0);
            sh[o] = xchg[tile + bk.row * t.DHP + bk.col + q];
            sh_count[o]++;
          }
        }
      }
      for (int b = 0; b < t.BB; ++b)
        for (int k = 0; k < t.DHP; ++k)
          if (sh_count[t.h_offset(b, k)] != 1) fail("shared h buffer", t.h_offset(b, k), sh_count[t.h_offset(b, k)]);

      std::vector<double> partial(t.partial_elems(), -1e300);
      std::vector<int> partial_count(partial.size(), 0);
      std::vector<int> a_count(static_cast<size_t>(t.rows()) * t.DHP, 0);
      // weight of block gate row `row`, input k (zero in the padding)
      auto weight = [&](int row, int k) {
        const auto gu = t.row_gate_unit(row);
        const int unit = t.head_unit(slice, gu.unit);
        return (row < t.rows() && unit < DH && k < DH) ? R(gu.gate, n, k, unit) : 0.0;
      };
      if (t.gmma) {
        // the h buffer at a nonzero shared-memory address, so the descriptor's start field counts
        const unsigned base = 1024;
        for (int wg = 0; wg < t.warpgroups(); ++wg)
          for (int mt = 0; mt < t.g_m_tiles(); ++mt) {
            std::vector<double> D(64 * t.BB, 0.0);
            for (int kt = 0; kt < t.g_k_steps(); ++kt) {
              double A[64][16] = {};
              for (int th = 0; th < 128; ++th) {
                const int warp = 4 * wg + th / 32, lane = th % 32;
                for (int i = 0; i < kA; ++i) {
                  const RowCol rk = t.g_a_elem(warp, mt, kt, lane, i);
                  if (rk.row < t.rows()) a_count[static_cast<size_t>(rk.row) * t.DHP + rk.col]++;
                  // the kernel loads register reg as one word at row row8 + lane/4 and k
                  // g_a_pair_k + 2*(lane%4) (16-bit: elements 2reg, 2reg+1) or + lane%4 (tf32:
                  // element reg)
                  const int per = t.K == 16 ? 2 : 1, reg = i / per;
                  const RowCol first = t.g_a_elem(warp, mt, kt, lane, reg * per);
                  const int row8 = t.g_a_pair_row8(warp, mt, reg);
                  if (rk.row != first.row || rk.col != first.col + i % per ||
                      first.row != row8 + lane / 4 ||
                      first.col != t.g_a_pair_k(warp, kt, reg) + per * (lane % 4) || row8 % 8 != 0 ||
                      (row8 < t.rows() && row8 % t.BH + 8 > t.BH))
                    fail("wgmma A register (row8 + group, k + per * thread in group)", i, 0);
                  A[ga_tab[(th * kA + i) * 2]][ga_tab[(th * kA + i) * 2 + 1]] = weight(rk.row, rk.col);
                }
              }
              const unsigned long long desc = t.g_desc_b(base, wg, kt);
              const int eb = t.elem_bytes;
              for (int k = 0; k < t.K; ++k)
                for (int col = 0; col < t.BB; ++col) {
                  const long long addr = wgmma_b_address(desc, k, col, eb) - base;
                  if (addr < 0 || addr % eb != 0 || addr / eb >= t.h_buffer_elems()) {
                    fail("wgmma B address outside the h buffer", addr, 0);
                    continue;
                  }
                  for (int row = 0; row < 64; ++row) D[row * t.BB + col] += A[row][k] * sh[addr / eb];
                }
            }
            for (int th = 0; th < 128; ++th) {
              const int warp = 4 * wg + th / 32, lane = th % 32;
              for (int i = 0; i < kD; ++i) {
                const double v = D[gd_tab[(th * kD + i) * 2] * t.BB + gd_tab[(th * kD + i) * 2 + 1]];
                if (t.g_c_elem(warp, mt, lane, i).row >= t.rows()) continue;  // padding rows
                const int o = t.g_c_smem_offset(warp, mt, lane, i);
                partial[o] = v;
                partial_count[o]++;
              }
            }
          }
      }
      for (int warp = 0; warp < (t.gmma ? 0 : t.warps()); ++warp)
        for (int mt = 0; mt < t.m_tiles(); ++mt)
          for (int nt = 0; nt < t.n_tiles(); ++nt) {
            double acc[32][4] = {};
            for (int kt = 0; kt < t.k_tiles(); ++kt) {
              // what each lane holds in its registers, through layout.h
              double a[32][8], bf[32][4];
              for (int lane = 0; lane < 32; ++lane) {
                for (int i = 0; i < kA; ++i) {
                  const RowCol rk = t.a_elem(warp, mt, kt, lane, i);
                  const auto gu = t.row_gate_unit(rk.row);
                  const int unit = t.head_unit(slice, gu.unit);
                  a[lane][i] = (unit < DH && rk.col < DH) ? R(gu.gate, n, rk.col, unit) : 0.0;
                  if (nt == 0) a_count[static_cast<size_t>(rk.row) * t.DHP + rk.col]++;
                  // 16-bit operands: the kernel loads elements (2r, 2r+1) as one 32-bit word of
                  // rt[g, n, e, k..k+1]
                  const RowCol first = t.K == 16 ? t.a_elem(warp, mt, kt, lane, i & ~1) : rk;
                  if (t.K == 16 && (rk.row != first.row || rk.col != first.col + (i & 1)))
                    fail("A register pairs (row, k), (row, k+1)", i, 0);
                  {
                    // the address the kernel loads register `reg` from (16-bit: the pair's first)
                    const int reg = t.K == 16 ? i / 2 : i;
                    const int row8 = t.a_pair_row8(warp, mt, reg);
                    if (first.row != row8 + lane / 4 || first.col != t.a_pair_k(warp, kt, reg) + t.a_lane_k(lane) ||
                        row8 % 8 != 0 || row8 % t.BH + 8 > t.BH)
                      fail("A register base (row8 + group, a_pair_k + a_lane_k)", i, 0);
                  }
                }
                for (int i = 0; i < kB; ++i) bf[lane][i] = sh[t.b_smem_offset(warp, nt, kt, lane, i)];
              }
              // the tensor core, from the independent PTX tables
              double A[16][16] = {}, Bm[16][8] = {};
              for (int lane = 0; lane < 32; ++lane) {
                for (int i = 0; i < kA; ++i) A[a_tab[(lane * kA + i) * 2]][a_tab[(lane * kA + i) * 2 + 1]] = a[lane][i];
                for (int i = 0; i < kB; ++i) Bm[b_tab[(lane * kB + i) * 2]][b_tab[(lane * kB + i) * 2 + 1]] = bf[lane][i];
              }
              for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 4; ++i) {
                  const int row = c_tab[(lane * 4 + i) * 2], col = c_tab[(lane * 4 + i) * 2 + 1];
                  for (int k = 0; k < t.K; ++k) acc[lane][i] += A[row][k] * Bm[k][col];
                }
            }
            for (int lane = 0; lane < 32; ++lane)
              for (int i = 0; i < 4; ++i) {
                const int o = t.c_smem_offset(warp, mt, nt, lane, i);
                partial[o] = acc[lane][i];
                partial_count[o]++;
              }
          }
      expect_once("weight slice (A fragments)", a_count);
      for (int wk = 0; wk < t.k_slices(); ++wk)
        for (int b = 0; b < t.BB; ++b)
          for (int row = 0; row < t.rows(); ++row) {
            const int o = t.partial_offset(wk, b, row);
            if (partial_count[o] != 1) fail("partial sums", o, partial_count[o]);
          }

      for (int tid = 0; tid < t.threads(); ++tid)
        for (int j = 0; j < t.elems_per_thread(); ++j) {
          if (!t.elem_valid(tid, j)) continue;
          const auto e = t.elem(tid, j);
          const int unit = t.head_unit(slice, e.unit), bg = t.batch_row(by, e.b);
          if (bg >= B || unit >= DH) continue;
          for (int g = 0; g < G; ++g) {
            double s = 0;
            for (int wk = 0; wk < t.k_slices(); ++wk) s += partial[t.partial_offset(wk, e.b, t.gate_row(g, e.unit))];
            const size_t o = ((static_cast<size_t>(bg) * G + g) * NH + n) * DH + unit;
            out[o] = s;
            out_count[o]++;
          }
        }
    }
  expect_once("output rh", out_count);

  FILE* of = std::fopen(argv[2], "wb");
  if (!of || std::fwrite(out.data(), sizeof(double), out.size(), of) != out.size()) return 2;
  std::fclose(of);
  if (failures) std::fprintf(stderr, "%d layout failures\n", failures);
  return failures ? 1 : 0;
}
