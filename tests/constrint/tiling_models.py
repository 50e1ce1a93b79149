"""A FlashRNN-sized tiling model (~60 variables) written for constrint's tests and benchmark.

It has the shape of a recurrent kernel's tiling problem: three dimensions (batch B, hidden
units G*H as weight rows, reduction H) each split over four levels (grid of blocks, warps per
block, MMA fragments per warp, fragment size), every split an exact product; registers, shared
memory and co-residency limits; an objective that is a predicted step time. Sizes and counts are
wide ranges (up to 2**30) tied together by equalities, as in FlashRNN's own model, so the solver
cannot simply enumerate value sets. Not a copy of any other project's model.
"""
import constrint as ci

BIG = 2 ** 30
GPU = dict(sms=132, regs_per_sm=65536, regs_per_block=65536, max_regs=255, smem=232448,
           max_threads=1024, max_blocks=32)


def flashrnn_like_model(batch=16, hidden=768, gates=4, heads=1, elem_bytes=2, gpu=GPU):
    """(model, {name: var}) for one configuration; ~60 variables, minimising a step time."""
    m = ci.Model()
    v = {}

    def var(name, lo=1, hi=BIG, values=None):
        v[name] = m.int_var(name, values=values) if values is not None else m.int_var(name, lo, hi)
        return v[name]

    rows = gates * hidden
    dims = {"b": batch, "r": rows, "k": hidden}
    frag = {"b": [8], "r": [16], "k": [16]}
    for d, total in dims.items():
        padded = var(f"{d}_padded", total, 2 * total)      # the dimension padded to whole tiles
        grid = var(f"{d}_grid")                             # blocks along d
        block = var(f"{d}_block")                           # elements of d per block
        warps = var(f"{d}_warps", 1, 16)                    # warps along d
        warp = var(f"{d}_warp")                             # elements per warp
        nfrag = var(f"{d}_frags", 1, 64)                    # fragments per warp
        size = var(f"{d}_frag", values=frag[d])             # fragment size
        m.add(padded == grid * block)
        m.add(block == warps * warp)
        m.add(warp == nfrag * size)
        m.add(padded - total <= block - 1)                  # padding less than one block
    # the reduction is not split over blocks (each block sees all of h), and H is whole fragments
    m.add(v["k_grid"] == 1)
    m.add(ci.divides(v["k_frag"], v["k_padded"]))
    # a gate's rows stay in one block: blocks split the hidden units, not the gates
    units = var("units_per_block")
    m.add(v["r_block"] == gates * units)
    m.add(ci.divides(units, hidden))
    warps = var("warps", 1, 32)
    threads = var("threads", 32, gpu["max_threads"])
    m.add(warps == v["b_warps"] * v["r_warps"] * v["k_warps"])
    m.add(threads == 32 * warps)
    m.add(v["b_warps"] == 1)                                # batch is the MMA's N side
    # registers per thread: weights of the block's rows, accumulators, h fragments, states
    w_regs = var("weight_regs", 0, BIG)
    acc_regs = var("acc_regs", 0, BIG)
    h_regs = var("h_regs", 0, BIG)
    state_regs = var("state_regs", 0, BIG)
    regs = var("regs", 0, gpu["max_regs"])
    m.add(w_regs == ci.cdiv(v["r_block"] * v["k_padded"] * elem_bytes, 4 * threads))
    m.add(acc_regs == ci.cdiv(v["r_block"] * v["b_block"], 32 * v["r_warps"]))
    m.add(h_regs == ci.cdiv(2 * v["b_frag"] * v["k_frag"] * elem_bytes, 4 * 32))
    m.add(state_regs == ci.cdiv(2 * units * v["b_block"], threads))
    m.add(regs == 8 * ci.cdiv(w_regs + acc_regs + h_regs + state_regs + 24, 8))
    m.add(regs * threads <= gpu["regs_per_block"])
    # shared memory: double-buffered h, split-K partial sums, pipelined wx tiles
    stages = var("stages", values=[1, 2, 3, 4])
    smem = var("smem", 0, gpu["smem"])
    m.add(smem == 2 * v["b_block"] * v["k_padded"] * elem_bytes
          + (v["k_warps"] - 1) * v["r_block"] * v["b_block"] * 4
          + stages * v["r_block"] * v["b_block"] * elem_bytes)
    # blocks of one head synchronise every step: all blocks of the grid must be resident
    blocks = var("blocks")
    per_sm = var("blocks_per_sm", 1, gpu["max_blocks"])
    m.add(blocks == heads * v["r_grid"] * v["b_grid"])
    m.add(per_sm == ci.cdiv(blocks, gpu["sms"]))
    m.add(per_sm * regs * threads <= gpu["regs_per_sm"])
    m.add(per_sm * smem <= 2 * gpu["smem"])
    # lanes of a warp over its [b, r] output tile, and what each thread then owns
    lanes_b = var("lanes_b", values=[1, 2, 4, 8, 16, 32])
    lanes_r = var("lanes_r", values=[1, 2, 4, 8, 16, 32])
    m.add(lanes_b * lanes_r == 32)
    for d, lanes in (("b", lanes_b), ("r", lanes_r)):
        per_thread = var(f"{d}_thread")
        m.add(v[f"{d}_warp"] == lanes * per_thread)
    pointwise = var("pointwise_per_thread", 1, 4096)
    m.add(pointwise == ci.cdiv(units * v["b_block"], threads))
    m.add(pointwise * gates <= v["b_thread"] * v["r_thread"] * v["k_warps"] * 4)
    # the reduction loop and the per-step loads of wx and h
    k_steps = var("k_steps", 1, 4096)
    m.add(v["k_padded"] == k_steps * v["k_warps"] * v["k_frag"])
    wx_bytes = var("wx_bytes", 0, BIG)
    loads = var("loads_per_thread", 0, BIG)
    m.add(wx_bytes == v["r_block"] * v["b_block"] * elem_bytes)
    m.add(loads == ci.cdiv(wx_bytes, 16 * threads))
    m.add(loads <= 64)
    hbm = var("hbm_time", 0, BIG)
    m.add(hbm == ci.cdiv((gates + 1) * units * v["b_block"] * elem_bytes, 1024))
    occupancy = var("warps_per_sm", 1, 64)
    m.add(occupancy == per_sm * warps)
    # predicted step time (arbitrary units): MMA issue, dependent chain, exchange, latency
    mma = var("mma_time", 0, BIG)
    chain = var("chain_time", 0, BIG)
    xchg = var("exchange_time", 0, BIG)
    m.add(mma == ci.cdiv(warps, 4) * v["b_frags"] * v["r_frags"] * v["k_frags"])
    m.add(chain == 32 * ci.cdiv(v["k_padded"], 16 * v["k_warps"]))
    m.add(xchg == (v["r_grid"] - 1) * 200 + ci.cdiv(v["b_block"] * v["k_padded"] * elem_bytes, 128))
    step = var("step_time", 0, BIG)
    m.add(step == per_sm * (mma + chain + xchg + hbm + k_steps + pointwise + ci.cdiv(600, stages))
          + 20 * v["b_padded"] + ci.cdiv(400, occupancy))
    m.minimize(step)
    return m, v
