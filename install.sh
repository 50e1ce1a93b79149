#!/usr/bin/env bash
# Installs flashseq with everything its tests and benchmarks need into the active Python
# environment (a venv is best), from the repository root:  bash install.sh
#
# 1. Build tools: a setuptools that can build wheels (>= 77), wheel, and ninja, which compiles
#    the C++ extension in parallel.
# 2. torch: a torch >= 2.11 already installed (a GPU machine's CUDA build, say) is kept.
#    Otherwise a CPU-only torch is installed, never the CUDA build that a plain `pip install
#    torch` picks on Linux (several GB of nvidia-* packages): first from the sources pip is
#    configured with, else from PyTorch's CPU wheel index.
# 3. flashseq itself with the "dev" extras (pytest, triton for the interpreter tests, ortools,
#    onnx, matplotlib for the benchmarks' --png...), built against that torch (--no-build-isolation). The CPU extension flashseq._C
#    is compiled on first use into $FLASHSEQ_CACHE_DIR (default ~/.cache/flashseq), once per
#    torch version and source change.
#
# Environment: PYTHON (default: python), FLASHSEQ_TORCH (the torch to install when none is
# present; default: torch==2.13.0+cpu on Linux, torch==2.13.0 elsewhere),
# FLASHSEQ_EDITABLE=1 for an editable (development) install, FLASHSEQ_INSTALL_DRY_RUN=1 to print
# the pip commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
pip_install() {
    if [ "${FLASHSEQ_INSTALL_DRY_RUN:-0}" = 1 ]; then echo "would run: pip install $*"; return 0; fi
    "$PYTHON" -m pip install --progress-bar off "$@"
}

echo "== flashseq install: build tools"
pip_install -q "setuptools>=77" wheel ninja

if "$PYTHON" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
major, minor = (int(p) for p in torch.__version__.split(".")[:2])
print(f"== flashseq install: keeping torch {torch.__version__} (cuda: {torch.version.cuda})")
sys.exit(0 if (major, minor) >= (2, 11) else 1)
EOF
then
    :
else
    if [ "$(uname -s)" = Linux ]; then default_torch="torch==2.13.0+cpu"; else default_torch="torch==2.13.0"; fi
    torch_spec="${FLASHSEQ_TORCH:-$default_torch}"
    echo "== flashseq install: no torch >= 2.11 here; installing $torch_spec (CPU only)"
    # pip's configured sources first (quiet: a miss is expected on most machines), then PyTorch's
    # CPU index, which holds the +cpu builds PyPI does not.
    if ! pip_install -q "$torch_spec" 2>/dev/null; then
        pip_install "$torch_spec" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

echo "== flashseq install: flashseq and its test/benchmark dependencies"
editable=()
if [ "${FLASHSEQ_EDITABLE:-0}" = 1 ]; then editable=(-e); fi
pip_install --no-build-isolation "${editable[@]}" ".[dev]"
[ "${FLASHSEQ_INSTALL_DRY_RUN:-0}" = 1 ] && exit 0
echo "== flashseq install: done ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)'))"
