"""A head-wise sLSTM: xLSTM's scalar-memory LSTM with a block-diagonal recurrence.

``flashseq.sLSTM(..., num_heads=NH)`` splits the hidden size H into NH heads of DH = H / NH
units; each head's recurrence only sees its own units (the recurrent weight is [4, NH, DH, DH]).
The example runs a 2-layer model, checks that running a sequence in two halves (carrying the
states h, c, n, m) equals running it at once, compares the default back end with the float64
reference, and shows the same head-wise layout on an LSTM.

    python examples/slstm_headwise.py [--batch 4] [--steps 32] [--hidden 64] [--heads 4]
"""
from __future__ import annotations

import argparse

import torch

import flashseq


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model = flashseq.sLSTM(16, args.hidden, num_heads=args.heads, num_layers=2, batch_first=True)
    print(model)
    for name, p in model.named_parameters():
        print(f"  {name:<14} {tuple(p.shape)}")

    x = torch.randn(args.batch, args.steps, 16)
    y, states = model(x)                      # y [B, T, H], states [layers, 4 (h c n m), B, H]
    print(f"input {tuple(x.shape)} -> output {tuple(y.shape)}, states {tuple(states.shape)}")

    # Carrying the states across two halves gives the same result as one pass.
    half = args.steps // 2
    y1, s1 = model(x[:, :half])
    y2, s2 = model(x[:, half:], s1)
    split_diff = (torch.cat([y1, y2], dim=1) - y).abs().max().item()
    print(f"two halves vs one pass: largest difference {split_diff:.2e}")

    # The float64 reference back end on the same weights is the ground truth.
    ref = flashseq.sLSTM(16, args.hidden, num_heads=args.heads, num_layers=2, batch_first=True,
                         backend="reference", dtype=torch.float64)
    ref.load_state_dict(model.state_dict())
    y_ref, _ = ref(x.double())
    rel_err = ((y.double() - y_ref).norm() / y_ref.norm()).item()
    print(f"default back end vs float64 reference: relative error {rel_err:.1e}")

    # The head-wise LSTM uses the same block-diagonal layout for its recurrent weight.
    lstm = flashseq.LSTM(16, args.hidden, num_heads=args.heads, batch_first=True)
    print(f"head-wise LSTM: weight_hh_l0 {tuple(lstm.weight_hh_l0.shape)} "
          f"(4 gates x {args.heads} heads x {args.hidden // args.heads} x {args.hidden // args.heads})")
    out, (h, c) = lstm(x)
    print(f"head-wise LSTM output {tuple(out.shape)}, h {tuple(h.shape)}")
    return {"split_diff": split_diff, "rel_err": rel_err, "output_shape": tuple(y.shape)}


if __name__ == "__main__":
    main()
