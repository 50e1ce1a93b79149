"""What a benchmark run writes: the machine it ran on, the rows, as JSON and as Markdown.

A result file is self-describing so that two of them can be compared later (bench.compare)
without guessing where or how they were made.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

FORMAT = "flashseq-bench/1"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Columns every row has, in this order, before the suite's own columns.
LEADING_COLUMNS = ("case", "provider", "median_ms", "min_ms", "iqr_ms")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def device_name(device) -> str:
    """A human name for ``device``: the GPU's name, or "cpu: <CPU model>"."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}"


def machine_info(device) -> dict:
    """Where and with what a run was made. No host name: results are committed publicly."""
    device = torch.device(device)
    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # FLASHSEQ_COMMIT: for a copy of the tree without .git (e.g. on a GPU machine)
        "flashseq_commit": _git("rev-parse", "HEAD") or os.environ.get("FLASHSEQ_COMMIT"),
        "tree_dirty": None if status is None else bool(status),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["sm_count"] = props.multi_processor_count
        info["capability"] = f"{props.major}.{props.minor}"
    return info


def command_line() -> str:
    """The command as typed, e.g. ``python -m bench quick --json out.json``."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("bench", "__main__.py")):
        argv = ["python", "-m", "bench", *argv[1:]]
    return shlex.join(argv)


def make_result(suite: str, description: str, device, rows: list[dict]) -> dict:
    """The JSON document of one suite's run."""
    return {
        "format": FORMAT,
        "suite": suite,
        "description": description,
        "command": command_line(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "rows": rows,
    }


def _finite(value):
    """``value`` with NaN/inf floats replaced by None, so the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(result: dict, path) -> None:
    """Write ``result`` to ``path`` (parent folders created), pretty-printed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(result), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def load_json(path) -> dict:
    """Read a result written by ``write_json``; ``ValueError`` if it is not one."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT or "rows" not in result:
        raise ValueError(f"{path} is not a flashseq benchmark result (format {FORMAT!r} with rows)")
    return result


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def columns(rows: list[dict]) -> list[str]:
    """The leading columns, then every other key in order of first appearance."""
    seen = list(LEADING_COLUMNS)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    return seen


def markdown_table(rows: list[dict], cols: list[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (missing cells left empty). Default columns:
    ``columns(rows)``."""
    cols = columns(rows) if cols is None else list(cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def ratio_summary(rows: list[dict]) -> list[str]:
    """Per provider and ratio column: geometric mean, best and worst ratio with the worst case."""
    lines = []
    ratio_columns = [c for c in columns(rows) if c == "ratio" or c.startswith("ratio_")]
    for col in ratio_columns:
        by_provider: dict[str, list[tuple[float, str]]] = {}
        for r in rows:
            value = r.get(col)
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                by_provider.setdefault(r["provider"], []).append((value, r["case"]))
        for provider, pairs in by_provider.items():
            values = [v for v, _ in pairs]
            if all(v == 1.0 for v in values):
                continue  # the baseline itself
            geo = math.exp(sum(math.log(v) for v in values) / len(values))
            worst, worst_case = max(pairs)
            lines.append(f"- {col} of {provider}: geometric mean {geo:.3g}, best {min(values):.3g}, "
                         f"worst {worst:.3g} ({worst_case}), over {len(values)} case(s)")
    return lines


def markdown(result: dict) -> str:
    """The Markdown report: title, how it was made, then the table."""
    m = result["machine"]
    head = [
        f"# bench: {result['suite']}",
        "",
        result.get("description", ""),
        "",
        f"- device: {m['device_name']} ({m['device']}); {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads",
        f"- versions: python {m['python']}, torch {m['torch']}, triton {m['triton']}, "
        f"cuda {m['cuda']}",
        f"- commit: {m['flashseq_commit']}{' (dirty tree)' if m['tree_dirty'] else ''}",
        f"- command: `{result['command']}`",
        f"- time (UTC): {result['timestamp_utc']}; platform {m['platform']}",
        "",
        "Times are milliseconds per call (median, min and inter-quartile range of the runs).",
        "",
    ]
    summary = ratio_summary(result["rows"])
    if summary:
        head += ["Ratios are time / the baseline's time in the same case (below 1 is faster):",
                 "", *summary, ""]
    return "\n".join(head) + markdown_table(result["rows"]) + "\n"


def write_markdown(result: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result), encoding="utf-8")
