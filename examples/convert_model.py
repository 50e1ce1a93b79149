"""Convert an existing PyTorch model: swap its torch.nn.LSTM / GRU layers for flashseq's.

A small tagger (embedding, a 2-layer bidirectional LSTM, a GRU, a linear head) is built with
torch.nn, then ``flashseq.convert`` replaces its recurrent layers in place. The converted model
shares the original's parameters, so it computes the same outputs and gradients, and its
state_dict still loads into the unconverted model.

    python examples/convert_model.py [--batch 8] [--steps 50] [--hidden 64]
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import flashseq


class Tagger(nn.Module):
    """tokens [B, T] -> tag scores [B, T, tags], built from plain torch.nn layers."""

    def __init__(self, vocab: int, hidden: int, tags: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens):
        x, _ = self.lstm(self.embed(tokens))
        x, _ = self.gru(x)
        return self.head(x)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="sequence length T")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    original = Tagger(vocab=100, hidden=args.hidden, tags=5)
    model = flashseq.convert(copy.deepcopy(original))     # in place; returns the model
    print("converted layers:", {name: type(m).__module__ + "." + type(m).__name__
                                for name, m in model.named_children() if name in ("lstm", "gru")})

    tokens = torch.randint(0, 100, (args.batch, args.steps))
    target = torch.randint(0, 5, (args.batch, args.steps))
    losses = {}
    for name, m in (("torch.nn", original), ("flashseq", model)):
        m.zero_grad()
        scores = m(tokens)
        loss = nn.functional.cross_entropy(scores.reshape(-1, 5), target.reshape(-1))
        loss.backward()
        losses[name] = (scores.detach(), loss.item(), m.lstm.weight_hh_l0.grad.clone())

    out_diff = (losses["torch.nn"][0] - losses["flashseq"][0]).abs().max().item()
    grad_diff = (losses["torch.nn"][2] - losses["flashseq"][2]).abs().max().item()
    print(f"loss: torch.nn {losses['torch.nn'][1]:.6f}, flashseq {losses['flashseq'][1]:.6f}")
    print(f"largest difference: outputs {out_diff:.2e}, d(weight_hh_l0) {grad_diff:.2e} "
          "(float32 rounding)")

    # Same parameter names and shapes: the converted model's state_dict loads into the original.
    original.load_state_dict(model.state_dict())
    print("state_dict of the converted model loads into the torch.nn model: ok")
    return {"output_diff": out_diff, "grad_diff": grad_diff}


if __name__ == "__main__":
    main()
