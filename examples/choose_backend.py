"""Choosing a back end for ``flashseq.ops.fused_rnn`` (and the modules' ``backend=`` argument).

Lists the back ends that run on this machine, runs one LSTM call on each and compares it with
the float64 reference, times them, then shows the two rules of the choice: ``backend="auto"``
falls back to a slower back end with one warning when the fastest cannot serve a call (here:
float16 on a CPU), and a back end named explicitly that cannot run raises NotImplementedError.

    python examples/choose_backend.py [--batch 8] [--steps 64] [--hidden 128] [--repeat 5]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

import flashseq


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per back end")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, T, H = args.batch, args.steps, args.hidden

    names = flashseq.ops.available_backends(device)
    print(f"device {device}: back ends that run here, in auto's order: {names}")

    # fused_rnn layouts: wx [B, T, G, NH, DH], r [G, NH, DH, DH], b [G, NH, DH]; LSTM has G = 4.
    wx = torch.randn(B, T, 4, 1, H, device=device)
    r = torch.randn(4, 1, H, H, device=device) / H ** 0.5
    b = torch.randn(4, 1, H, device=device) * 0.1
    ref, _ = flashseq.ops.fused_rnn(wx.double(), r.double(), b.double(), cell="lstm",
                                    backend="reference")
    results = {}
    for name in names:
        if name == "triton" and device.type == "cpu":
            print("triton: runs here only under the Triton interpreter (for tests); not timed")
            continue
        h, _ = flashseq.ops.fused_rnn(wx, r, b, cell="lstm", backend=name)   # warm-up, builds
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeat):
            h, _ = flashseq.ops.fused_rnn(wx, r, b, cell="lstm", backend=name)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3 / args.repeat
        results[name] = rel_err(h, ref)
        print(f"{name:>10}: {ms:8.2f} ms per call, relative error vs float64 {results[name]:.1e}")

    # "auto" skips a back end that cannot serve the call and says so once.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flashseq.ops.fused_rnn(wx.half(), r.half(), b.half(), cell="lstm", backend="auto")
    fallback = [str(w.message) for w in caught]
    print("float16 with backend='auto':", fallback[0] if fallback else
          "no warning (served by the fastest back end, or the warning was given earlier)")

    # A named back end never falls back: it raises, saying why.
    try:
        flashseq.ops.fused_rnn(wx, r, b, cell="lstm", backend="cuda")
    except NotImplementedError as err:
        print("backend='cuda':", err)

    # Modules take the same names: flashseq.LSTM(..., backend="reference") runs the PyTorch loop.
    lstm = flashseq.LSTM(H, H, batch_first=True, backend=names[0]).to(device)
    y, _ = lstm(torch.randn(B, T, H, device=device))
    print(f"flashseq.LSTM(backend={names[0]!r}) output {tuple(y.shape)}")
    return {"backends": names, "errors": results, "fallback": fallback}


if __name__ == "__main__":
    main()
