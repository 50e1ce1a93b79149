"""The README's GPU table, rendered from a GPU session's results folder.

    python -m bench.readme_table bench/results/<gpu-slug>/ [--out FILE]

Reads ``tune.json`` (``flashseq-tune --json``: tuned vs untuned Triton tiles and the peers) and
``fused_rnn.json`` (``python -m bench fused_rnn --json``: the LSTM suite with
``flashseq:triton`` tuned and untuned, ``flashseq:cuda``, cuDNN and FlashRNN) and prints
Markdown: a heading naming the GPU, one table per file found, and the reasons of rows that did
not run. bench/gpu_session.sh writes it as ``README_table.md`` so the README is updated by
copying that file, not by hand.

Exit status: 0 with at least one of the two files read, 1 when neither is there or readable,
2 on bad usage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# fused_rnn providers in the order the table shows them, with their column titles
PROVIDER_COLUMNS = (
    ("flashseq:triton", "flashseq Triton, tuned"),
    ("flashseq:triton-untuned", "flashseq Triton, untuned"),
    ("flashseq:cuda", "flashseq CUDA"),
    ("torch.nn.LSTM", "cuDNN"),
    ("flashrnn:cuda_fused", "FlashRNN cuda_fused"),
    ("flashrnn:triton_fused", "FlashRNN triton_fused"),
)


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _speedup(ratio) -> str:
    """A paired time ratio (ours / theirs, < 1 is faster) as a speed-up; a reason as it is."""
    if isinstance(ratio, str):
        return ratio.replace("|", "/")
    if not ratio:
        return "-"
    return f"{1 / ratio:.2f}x"


def _shape(r: dict) -> str:
    hidden = (f"H={r['head_dim']}" if r["heads"] == 1
              else f"NH={r['heads']} DH={r['head_dim']}")
    return f"{r['cell']} B={r['batch']} T={r['steps']} {hidden} {r['dtype']}"


def tune_table(data: dict) -> str:
    """Markdown table of a ``flashseq-tune --json`` file: per workload the tuned configuration,
    its time, the untuned (plan) time and the paired speed-ups over the plan and each peer."""
    peers = list(data.get("peers") or [])
    for r in data.get("results", []):  # files written before the peers list was recorded
        for name in (r.get("peers") or {}):
            if name not in peers:
                peers.append(name)
    head = "| shape | tuned config | tuned ms | untuned ms | speed-up vs untuned |"
    head += "".join(f" speed-up vs {p} |" for p in peers)
    lines = [head, "|---|---|---:|---:|---:|" + "---:|" * len(peers)]
    for r in data.get("results", []):
        if r.get("time_ms") is None:
            why = r.get("error") or r.get("skipped") or "not tuned"
            lines.append(f"| {_shape(r)} | {why} | - | - | - |" + " - |" * len(peers))
            continue
        found = r.get("peers") or {}
        cells = "".join(f" {_speedup(found.get(p))} |" for p in peers)
        lines.append(f"| {_shape(r)} | {r.get('config') or 'plan'} | {r['time_ms']:.3f} | "
                     f"{r['untuned_ms']:.3f} | {_speedup(r.get('ratio_vs_untuned'))} |" + cells)
    return "\n".join(lines)


def fused_rnn_table(data: dict) -> tuple[str, list[str]]:
    """(Markdown table, notes) of a fused_rnn suite result: one row per case, median ms per
    provider (a provider that did not run shows its first word, e.g. "skipped"), and tuned over
    untuned: the paired ratio (timed in alternation) when the file has it, else the ratio of
    the two medians marked "(medians)"; notes list each distinct reason once."""
    rows = data.get("rows", [])
    cases: dict = {}
    for r in rows:
        cases.setdefault(r["case"], {})[r["provider"]] = r
    present = [(p, title) for p, title in PROVIDER_COLUMNS
               if any(p in by for by in cases.values())]
    head = "| case |" + "".join(f" {title} ms |" for _, title in present) + " tuned / untuned |"
    lines = [head, "|---|" + "---:|" * (len(present) + 1)]
    notes: list[str] = []
    for case, by in cases.items():
        cells = []
        for p, _ in present:
            r = by.get(p)
            if r is None:
                cells.append("-")
            elif r.get("median_ms") is not None:
                cells.append(f"{r['median_ms']:.3f}")
            else:
                status = str(r.get("status") or "not timed")
                cells.append(status.split(":")[0])
                note = f"{p}: {status}"
                if note not in notes:
                    notes.append(note)
        row = by.get("flashseq:triton", {})
        if row.get("ratio_untuned_paired"):
            cells.append(f"{row['ratio_untuned_paired']:.3f}")
        elif row.get("ratio_untuned"):
            cells.append(f"{row['ratio_untuned']:.3f} (medians)")
        else:
            cells.append("-")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines), notes


def render(folder) -> str | None:
    """The Markdown for ``folder`` (see the module docstring), or None when neither
    tune.json nor fused_rnn.json can be read there."""
    folder = Path(folder)
    tune, suite = _read(folder / "tune.json"), _read(folder / "fused_rnn.json")
    if tune is None and suite is None:
        return None
    machine = (suite or {}).get("machine") or {}
    gpu = machine.get("device_name") or (tune or {}).get("device", {}).get("name") or folder.name
    out = [f"### fused_rnn on {gpu}", ""]
    if machine.get("flashseq_commit"):
        out += [f"Commit {machine['flashseq_commit'][:10]}, {suite.get('timestamp_utc', '')}; "
                f"results in `{folder.as_posix().rstrip('/')}/`.", ""]
    if tune is not None:
        command = tune.get("command") or "flashseq-tune --gpu auto --shapes fused_rnn"
        out += [f"Tuning (`{command}`, forward + backward; "
                "speed-ups are medians of per-pair ratios, the two calls timed in alternation; "
                "cuDNN: flashseq.LSTM vs torch.nn.LSTM with the same weights, one head only; "
                "FlashRNN: the fused_rnn benchmark's calls, input projection included on both "
                "sides):",
                "", tune_table(tune), ""]
    if suite is not None:
        table, notes = fused_rnn_table(suite)
        out += ["`python -m bench fused_rnn` (median ms; the input projection included; "
                "tuned = with the cache the tuning above wrote, untuned = `FLASHSEQ_TUNING=off`):",
                "", table, ""]
        if notes:
            out += ["Not timed:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_table",
                                     description="Render a GPU results folder (tune.json, "
                                                 "fused_rnn.json) as the README's Markdown.")
    parser.add_argument("folder", type=Path, help="a results folder bench/gpu_session.sh wrote (bench/results/<gpu>)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    args = parser.parse_args(argv)
    text = render(args.folder)
    if text is None:
        print(f"bench.readme_table: neither tune.json nor fused_rnn.json is readable in "
              f"{args.folder}", file=sys.stderr)
        return 1
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
