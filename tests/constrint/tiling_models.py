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


# ---- the FlashRNN problem class ---------------------------------------------------------------
ELEM_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def fused_step_tiling_model(batch=16, head_dim=768, heads=1, gates=4, dtype="bfloat16",
                            gpu=GPU, objective="registers"):
    """(model, {name: var}): the tiling problem of a fused RNN kernel, forward and backward pass.

    Written from this description of the problem class (the class FlashRNN's fused LSTM kernels
    solve before compiling; no other project's model text is used):

    Work. Every time step, for each of `heads` heads, a persistent kernel multiplies the state
    h [B, K] by the recurrent matrix R [K, N] of that head. Forward: K = D (head dim), N = G*D
    (G recurrent gates); backward: the transposed product, K = G*D, N = D. Each pass has its own
    tiling; the two share the problem sizes and the GPU. B is the batch padded to a multiple of 8.

    Variables (integers in [1, 2**30] unless a smaller set is stated; ~57 in all):
      - problem sizes and GPU limits (B, D, G, heads, G*D, SM count, thread cap, register budget,
        shared-memory cap): wide variables fixed by an equality, as a model written in a text
        format states them, so equality chains carry them into the rest of the model;
      - per pass and per dimension d in {b (batch), n (output rows), k (reduction)}: the tensor
        core fragment size frag_d (frag_b, frag_n in {8, 16, 32} with frag_b * frag_n = 256,
        frag_k = 16 for 16-bit inputs; 16 x 16 x 8 for fp32), the warps along d in a block
        (warp tile count), the fragments one warp walks along d (loop count), the block tile
        and the blocks along d (block tile count);
      - per pass: head groups (blocks along heads), warps per block, blocks in the grid;
        fragments of R a warp keeps in registers across steps ("cached"), elements of R held in
        registers per block, accumulator registers; shared memory for the uncached part of R's
        block tile, for partial sums when warps split the reduction, for the h tile, and in all.

    Constraints:
      - products equal to problem sizes: blocks_d * block_d = size_d and
        block_d = warps_d * loop_d * frag_d for each dimension; head groups * heads per group =
        heads; warps = warps_b * warps_n * warps_k; blocks = product of the block counts;
      - divisibility by tensor-core multiples: 16 | D, the warp's k-extent (warps_k * frag_k)
        divides K, frag_n divides the block's rows, frag_b * frag_b's loop count divides B;
      - caps: 32 * warps <= a quarter of the thread limit (room for two blocks), loop_b <= 4,
        all blocks resident at once (blocks <= SMs: the grid synchronises every step); registers
        (R's cached elements + fp32 accumulators + h fragments, in 16-bit units) <= the register
        budget per block; shared memory (uncached R + split-K partial sums + h with padding)
        <= the per-block cap;
      - cached <= the fragments a warp walks (loop_n * loop_k).

    Objective ("registers"): maximise the elements of R held in registers, forward plus backward
    pass (each avoids a shared-memory read per step); objective=None: feasibility only (the
    first point, as FlashRNN's solver answers).
    """
    m = ci.Model()
    v = {}

    def var(name, lo=1, hi=BIG, values=None):
        v[name] = m.int_var(name, values=values) if values is not None else m.int_var(name, lo, hi)
        return v[name]

    elem = ELEM_BYTES[dtype]
    units = 2 if elem == 2 else 1  # registers are counted in 16-bit units for 16-bit inputs
    acc_units = 4 // elem
    sizes = dict(batch=-(-batch // 8) * 8, head_dim=head_dim, gates=gates, heads=heads,
                 sms=gpu["sms"], max_threads=gpu["max_threads"] // 4,
                 reg_budget=gpu["regs_per_block"] * units, smem_cap=gpu["smem"])
    for name, value in sizes.items():
        m.add(var(name) == value)
    rows = var("rows")
    m.add(rows == v["gates"] * v["head_dim"])
    m.add(ci.divides(16, v["head_dim"]))
    frags = [8, 16, 32] if elem == 2 else [16]
    k_frag = 16 if elem == 2 else 8
    registers = []
    for p, (n_size, k_size) in (("fwd", (rows, v["head_dim"])), ("bwd", (v["head_dim"], rows))):
        fb, fn = var(f"{p}_frag_b", values=frags), var(f"{p}_frag_n", values=frags)
        fk = var(f"{p}_frag_k")
        m.add(fb * fn == 256)
        m.add(fk == k_frag)
        tiles = {}
        for d, size, frag in (("b", v["batch"], fb), ("n", n_size, fn), ("k", k_size, fk)):
            grid, block = var(f"{p}_blocks_{d}"), var(f"{p}_block_{d}")
            warps, loop = var(f"{p}_warps_{d}", 1, 32), var(f"{p}_loop_{d}")
            m.add(grid * block == size)
            m.add(block == warps * loop * frag)
            tiles[d] = (grid, block, warps, loop)
        m.add(tiles["b"][3] <= 4)
        m.add(ci.divides(tiles["k"][2] * fk, k_size))
        m.add(ci.divides(fn, tiles["n"][1]))
        m.add(ci.divides(fb * tiles["b"][3], v["batch"]))
        groups, per_group = var(f"{p}_head_groups"), var(f"{p}_heads_per_block")
        m.add(groups * per_group == v["heads"])
        warps = var(f"{p}_warps", 1, 32)
        m.add(warps == tiles["b"][2] * tiles["n"][2] * tiles["k"][2])
        m.add(32 * warps <= v["max_threads"])
        blocks = var(f"{p}_blocks")
        m.add(blocks == tiles["b"][0] * tiles["n"][0] * tiles["k"][0] * groups)
        m.add(blocks <= v["sms"])
        cached, reg_w = var(f"{p}_cached", 0, BIG), var(f"{p}_reg_w", 0, BIG)
        m.add(cached <= tiles["n"][3] * tiles["k"][3])
        m.add(reg_w == cached * fk * fn * warps)
        acc = var(f"{p}_acc_regs", 0, BIG)
        m.add(acc == acc_units * warps * tiles["b"][3] * tiles["n"][3] * fb * fn)
        m.add(per_group * (reg_w + acc + warps * fb * fk * tiles["k"][3]) <= v["reg_budget"])
        smem = var(f"{p}_smem", 0, BIG)
        smem_w = var(f"{p}_smem_w", 0, BIG)
        m.add(smem_w + elem * reg_w == elem * tiles["n"][1] * tiles["k"][1])
        m.add(smem == per_group * (smem_w + 4 * (tiles["k"][2] - 1) * tiles["b"][1] * tiles["n"][1]
                                   + elem * tiles["b"][1] * (tiles["k"][1] + 8)))
        m.add(smem <= v["smem_cap"])
        registers.append(per_group * reg_w)
    if objective == "registers":
        m.maximize(registers[0] + registers[1])
    elif objective is not None:
        raise ValueError(f"objective must be 'registers' or None, got {objective!r}")
    return m, v
