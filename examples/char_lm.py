"""Train a character-level language model on the text the repository ships
(examples/data/corpus.txt), then sample from it.

Model: embedding -> flashseq recurrent layers (LSTM, GRU or head-wise sLSTM) -> linear head,
trained with Adam on random windows of the text (next-character cross-entropy).

    python examples/char_lm.py [--cell lstm|gru|slstm] [--steps 300] [--hidden 128]
                               [--seq-len 64] [--batch 32] [--sample 200]

Training brings the loss down from ln(vocabulary), about 3.9 (chance), and the samples from
noise toward word-like text; the defaults take a few minutes on a two-core CPU.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import time

import torch
from torch import nn

import flashseq

CORPUS = pathlib.Path(__file__).resolve().parent / "data" / "corpus.txt"


class CharLM(nn.Module):
    """tokens [B, T] int64 -> logits [B, T, vocab]."""

    def __init__(self, vocab: int, hidden: int, cell: str, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        if cell == "lstm":
            self.rnn = flashseq.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        elif cell == "gru":
            self.rnn = flashseq.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        else:
            heads = 4 if hidden % 4 == 0 else 1
            self.rnn = flashseq.sLSTM(hidden, hidden, num_heads=heads, num_layers=layers,
                                      batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(y), state


@torch.no_grad()
def sample(model: CharLM, chars: list[str], prompt: str, length: int, generator) -> str:
    """Feed ``prompt``, then draw ``length`` characters one at a time, carrying the state."""
    index = {c: i for i, c in enumerate(chars)}
    tokens = torch.tensor([[index[c] for c in prompt if c in index] or [0]])
    logits, state = model(tokens)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / 0.8, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        out.append(chars[nxt.item()])
        logits, state = model(nxt.view(1, 1), state)
    return prompt + "".join(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("lstm", "gru", "slstm"), default="lstm")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--sample", type=int, default=200, help="characters to sample at the end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    print(f"corpus: {len(text)} characters, vocabulary {len(chars)} "
          f"(chance loss ln({len(chars)}) = {math.log(len(chars)):.2f})")

    model = CharLM(len(chars), args.hidden, args.cell)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=generator)
        window = torch.stack([data[s:s + args.seq_len + 1] for s in starts.tolist()])
        logits, _ = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.1f} s)")

    text_out = sample(model, chars, "The ", args.sample, generator)
    print("sample:", text_out.replace("\n", " "))
    return {"first_loss": losses[0], "last_loss": sum(losses[-5:]) / len(losses[-5:]),
            "sample": text_out}


if __name__ == "__main__":
    main()
