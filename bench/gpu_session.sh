#!/usr/bin/env bash
# The one GPU entry point: runs every GPU check that exists and writes the results under
# bench/results/<gpu-slug>/ (slug from nvidia-smi's GPU name, e.g. nvidia-h100-80gb-hbm3).
#
#   bash bench/gpu_session.sh [--tiny] [--dry-run] [--out DIR] [--suites "A B"]
#     --tiny     tiny benchmark sizes: checks the pipeline end to end, the numbers mean little
#     --dry-run  print the steps without running anything (works without a GPU)
#     --out DIR  results folder instead of bench/results/<gpu-slug>
#     --suites   only these benchmark suites (default: every one `python -m bench` lists)
#
# Steps: record the machine; install peer wheels, if any, offline; pytest -m gpu (slow ones
# included); the compute-sanitizer cases (tests marked "sanitizer", under memcheck and
# racecheck; none = a no-op with a message); every `python -m bench` suite, each writing <suite>.json, .md and .png. Every step
# runs even when an earlier one failed; SUMMARY.md lists them with exit codes, and the script
# exits 1 if any failed.
#
# Peers (flashrnn, flash-linear-attention, ...) travel as wheels in .whl/ (or the folder in
# $FLASHSEQ_PEER_WHEELS): they are installed with --no-index --no-deps into a private folder
# that goes first on PYTHONPATH, so nothing is downloaded and the machine's torch stays.
# On a machine whose files come back through a size-limited folder, pack the results after:
#   bash bench/gpu_session.sh; tar -czf "$OUT/gpu_results.tgz" bench/results
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
quick=""
dry=0
out=""
only_suites=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) quick="--tiny" ;;
        --dry-run) dry=1 ;;
        --out) shift; out="${1:?--out needs a folder}" ;;
        --suites) shift; only_suites="${1:?--suites needs suite names}" ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu_session: unknown argument '$1' (allowed: --tiny --dry-run --out DIR --suites LIST)" >&2; exit 2 ;;
    esac
    shift
done

py="${PYTHON:-python3}"
# Timings under the Triton interpreter would be meaningless; it is for CPU-only test runs.
unset TRITON_INTERPRET

if [ "$dry" = 1 ]; then
    gpu_name="(dry run: no GPU queried)"
    slug="${FLASHSEQ_GPU_SLUG:-dry-run}"
else
    gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
    if [ -z "$gpu_name" ]; then
        echo "gpu_session: nvidia-smi reports no GPU; this script is for a GPU machine (try --dry-run)" >&2
        exit 2
    fi
    slug="$(printf '%s' "$gpu_name" | tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')"
fi
out="${out:-bench/results/$slug}"
logs="$out/logs"
[ "$dry" = 1 ] || mkdir -p "$logs"

steps_table=""
failed=0

# run_step NAME CMD...: run CMD, its output both on the console and in logs/NAME.log.
run_step() {
    local name="$1"; shift
    if [ "$dry" = 1 ]; then
        echo "[dry-run] $name: $*"
        return 0
    fi
    echo "=== $name: $*"
    local start end rc
    start=$(date +%s)
    "$@" 2>&1 | tee "$logs/$name.log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s)
    local verdict="ok"
    if [ "$rc" != 0 ]; then
        verdict="FAILED"
        failed=$((failed + 1))
    fi
    echo "=== $name: exit $rc ($verdict) after $((end - start)) s"
    steps_table+="| $name | \`$*\` | $rc | $verdict | $((end - start)) |"$'\n'
}

# note_step NAME TEXT: a step that did not need to run, with the reason.
note_step() {
    echo "=== $1: $2"
    steps_table+="| $1 | - | - | $2 | - |"$'\n'
}

# 1. peers, offline
wheels="${FLASHSEQ_PEER_WHEELS:-.whl}"
peer_dir="${TMPDIR:-/tmp}/flashseq-peers"
if compgen -G "$wheels/*.whl" > /dev/null; then
    run_step peers "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$peer_dir" "$wheels"/*.whl
    export PYTHONPATH="$peer_dir${PYTHONPATH:+:$PYTHONPATH}"
else
    note_step peers "no wheels in $wheels/; peers that are not installed show as skipped rows"
fi

# 2. the machine and versions, for the summary
run_step environment "$py" -m bench --machine

# 3. GPU tests
run_step pytest-gpu "$py" -m pytest -q -m gpu --runslow -p no:cacheprovider

# 4. compute-sanitizer cases: tests marked "sanitizer"
if [ "$dry" = 1 ]; then
    echo "[dry-run] sanitizer: compute-sanitizer --tool memcheck $py -m pytest -q -m sanitizer (if any test is marked sanitizer)"
    echo "[dry-run] sanitizer-racecheck: compute-sanitizer --tool racecheck $py -m pytest -q -m sanitizer"
else
    n_cases=$("$py" -m pytest -q -m sanitizer --collect-only -p no:cacheprovider 2>/dev/null | grep -c '::' || true)
    if [ "${n_cases:-0}" = 0 ]; then
        note_step sanitizer "no compute-sanitizer cases (no test is marked 'sanitizer'); nothing to run"
    elif ! command -v compute-sanitizer > /dev/null; then
        failed=$((failed + 1))
        note_step sanitizer "FAILED: $n_cases case(s) but compute-sanitizer is not on PATH"
    else
        run_step sanitizer compute-sanitizer --tool memcheck --error-exitcode 86 \
            --target-processes all "$py" -m pytest -q -m sanitizer -p no:cacheprovider
        # shared-memory races (the persistent CUDA kernels' h buffers and partial sums)
        run_step sanitizer-racecheck compute-sanitizer --tool racecheck --error-exitcode 86 \
            --target-processes all "$py" -m pytest -q -m sanitizer -p no:cacheprovider
    fi
fi

# 5. every benchmark suite, peers included
if [ -n "$only_suites" ]; then
    suites="$only_suites"
elif [ "$dry" = 1 ]; then
    suites="$("$py" -m bench --list-names 2>/dev/null || echo '(suites: python -m bench --list-names)')"
else
    suites="$("$py" -m bench --list-names)"
fi
for suite in $suites; do
    # microbench: three runs, so the result carries per-case margins and can serve as this
    # GPU's --compare baseline
    runs=""
    [ "$suite" = microbench ] && runs="--runs 3"
    run_step "bench-$suite" "$py" -m bench "$suite" $quick $runs --no-progress \
        --json "$out/$suite.json" --md "$out/$suite.md" --png "$out/$suite.png"
done

[ "$dry" = 1 ] && exit 0

# 6. summary
commit="$(git rev-parse HEAD 2>/dev/null || echo "${FLASHSEQ_COMMIT:-unknown (no git here)}")"
dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | head -n 1)"
{
    echo "# GPU session: $gpu_name"
    echo
    echo "- commit: $commit${dirty:+ (dirty tree)}"
    echo "- GPU: $gpu_name, driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
    echo "- time (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- command: bash bench/gpu_session.sh $quick${only_suites:+ --suites \"$only_suites\"}"
    echo
    echo '```'
    cat "$logs/environment.log" 2>/dev/null
    echo '```'
    echo
    echo "| step | command | exit | result | seconds |"
    echo "|---|---|---|---|---|"
    printf '%s' "$steps_table"
    echo
    echo "$failed step(s) failed. Logs: $logs/"
} > "$out/SUMMARY.md"
echo "=== summary: $out/SUMMARY.md ($failed step(s) failed)"
[ "$failed" = 0 ]
