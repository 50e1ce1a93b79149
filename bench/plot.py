"""Optional PNG of a result: one bar per (case, provider) median. Needs matplotlib, one of the
``dev`` extras (install.sh installs them), not a dependency of flashseq itself; without it the
PNG is skipped with a message."""
from __future__ import annotations

from pathlib import Path


def write_png(result: dict, path) -> bool:
    """Draw ``result``'s medians to ``path``; return False (and say why) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"bench: matplotlib is not installed; skipping the PNG {path}")
        return False
    rows = [r for r in result["rows"] if isinstance(r.get("median_ms"), (int, float))]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(cases) * max(1, len(providers))), 4.5))
    for k, provider in enumerate(providers):
        xs, ys = [], []
        for i, case in enumerate(cases):
            for r in rows:
                if r["case"] == case and r["provider"] == provider:
                    xs.append(i + k * width)
                    ys.append(r["median_ms"])
        ax.bar(xs, ys, width=width, label=provider)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("median ms per call")
    ax.set_yscale("log")
    ax.set_title(f"{result['suite']} on {result['machine']['device_name']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
