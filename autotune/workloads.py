"""What ``flashseq-tune`` tunes: ops (fused_rnn cells) and shapes (presets or a written list).

A shape is ``BxTxH`` (one head of H units) or ``BxTxNHxDH`` (NH heads of DH units), e.g.
``16x64x128`` or ``16x1024x12x64``; ``--shapes`` takes a preset name or a comma-separated list.
"""
from __future__ import annotations

from dataclasses import dataclass

OPS = ("lstm", "gru", "slstm", "elman")

# CPU presets. "small" is sized to finish the whole loop (candidates, re-timing, untuned and
# torch.nn comparisons) for two cells in well under 3 minutes on a busy 2-core machine.
CPU_PRESETS = {
    "small": ((1, 32, 1, 64), (16, 16, 1, 128), (32, 8, 1, 256)),
    "default": ((1, 128, 1, 128), (16, 128, 1, 128), (16, 128, 1, 512), (64, 64, 1, 256),
                (256, 32, 1, 128)),
}
# GPU presets: the head-wise workloads (B=16, T=1024, H=768 as NH x DH) and a short one.
# "fused_rnn" is the shape list of the fused_rnn benchmark suite on CUDA (bench/suites/
# fused_rnn.py; a test keeps the two equal) and "fused_rnn-tiny" that of its --tiny run, so the
# suite's flashseq:triton rows run what the tuner recorded (the cache bucket ignores T).
_FUSED_RNN_HEAD_DIMS = (16, 32, 64, 128, 256, 384, 768)
GPU_PRESETS = {
    "small": ((16, 256, 12, 64), (16, 256, 1, 768)),
    "default": tuple((16, 1024, 768 // dh, dh) for dh in _FUSED_RNN_HEAD_DIMS),
    "fused_rnn": tuple((16, 1024, 768 // dh, dh) for dh in _FUSED_RNN_HEAD_DIMS),
    "fused_rnn-tiny": tuple((16, 64, 768 // dh, dh) for dh in (64, 768)),
}


@dataclass(frozen=True)
class Workload:
    """One problem to tune: cell, B, T, NH, DH, dtype name."""

    cell: str
    batch: int
    steps: int
    heads: int
    head_dim: int
    dtype: str

    @property
    def label(self) -> str:
        hidden = (f"H={self.head_dim}" if self.heads == 1
                  else f"NH={self.heads} DH={self.head_dim}")
        return f"{self.cell} B={self.batch} T={self.steps} {hidden} {self.dtype}"


def parse_ops(text: str) -> list[str]:
    """'lstm,gru' -> ['lstm', 'gru']; 'fused_rnn' or 'all' -> every cell; ValueError naming
    the allowed values otherwise."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"--ops: give one or more of {', '.join(OPS)} (comma-separated)")
    out = []
    for name in names:
        chosen = OPS if name in ("fused_rnn", "all") else (name,)
        for op in chosen:
            if op not in OPS:
                raise ValueError(f"--ops: unknown op {name!r}; allowed: {', '.join(OPS)}, "
                                 "fused_rnn (all of them)")
            if op not in out:
                out.append(op)
    return out


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'16x64x128' -> (16, 64, 1, 128); '16x64x4x32' -> (16, 64, 4, 32)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or min(values, default=0) < 1:
        raise ValueError(f"--shapes: {text!r} is not BxTxH or BxTxNHxDH with positive integers "
                         "(e.g. 16x64x128 or 16x1024x12x64)")
    return (values[0], values[1], 1, values[2]) if len(values) == 3 else tuple(values)


def parse_shapes(text: str, device: str) -> list[tuple[int, int, int, int]]:
    """A preset name of the device ('small', 'default') or a comma-separated list of shapes."""
    presets = CPU_PRESETS if device == "cpu" else GPU_PRESETS
    if text in presets:
        return list(presets[text])
    return [parse_shape(p.strip()) for p in text.split(",") if p.strip()]


def workloads(ops, shapes, dtype: str) -> list[Workload]:
    return [Workload(op, b, t, nh, dh, dtype) for op in ops for (b, t, nh, dh) in shapes]


__all__ = ["OPS", "CPU_PRESETS", "GPU_PRESETS", "Workload", "parse_ops", "parse_shape",
           "parse_shapes", "workloads"]
