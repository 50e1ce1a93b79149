#!/usr/bin/env bash
# The one GPU entry point: runs every GPU check that exists and writes the results under
# bench/results/<gpu-slug>/ (slug from nvidia-smi's GPU name, e.g. nvidia-h100-80gb-hbm3).
#
#   bash bench/gpu_session.sh [--tiny] [--dry-run] [--out DIR] [--suites "A B"] [--no-tune]
#     --tiny     tiny benchmark sizes: checks the pipeline end to end, the numbers mean little
#     --dry-run  print the steps without running anything (works without a GPU)
#     --out DIR  results folder instead of bench/results/<gpu-slug>
#     --suites   only these benchmark suites (default: every one `python -m bench` lists)
#     --no-tune  skip the flashseq-tune step (the suites then run the untuned plans)
#
# Steps: record the machine; install peer wheels, if any, offline; pytest -m gpu (slow ones
# included); the compute-sanitizer cases (tests marked "sanitizer", under memcheck and
# racecheck; none = a no-op with a message); flashseq-tune --gpu auto over the fused_rnn
# suite's shapes (tune.json, tune.md, tune_cache.json); every `python -m bench` suite, each
# writing <suite>.json, .md and .png, with dispatch reading that tuning cache; the README's
# table (README_table.md, python -m bench.readme_table). Every step runs even when an earlier
# one failed; SUMMARY.md lists them with exit codes, and the script exits 1 if any failed.
#
# Caches: FLASHSEQ_CACHE_DIR is the session's own folder ($FLASHSEQ_SESSION_CACHE, default
# $TMPDIR/flashseq-gpu-session) for every step, so first-use builds are shared by the tests and
# the suites and dispatch in the suites reads exactly the tuning this session recorded.
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
tune=1
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) quick="--tiny" ;;
        --dry-run) dry=1 ;;
        --out) shift; out="${1:?--out needs a folder}" ;;
        --suites) shift; only_suites="${1:?--suites needs suite names}" ;;
        --no-tune) tune=0 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_session: unknown argument '$1' (allowed: --tiny --dry-run --out DIR --suites LIST --no-tune)" >&2; exit 2 ;;
    esac
    shift
done

py="${PYTHON:-python3}"
# Timings under the Triton interpreter would be meaningless; it is for CPU-only test runs.
unset TRITON_INTERPRET
# The session's cache root (see the header): builds, and the tuning cache the suites read.
export FLASHSEQ_CACHE_DIR="${FLASHSEQ_SESSION_CACHE:-${TMPDIR:-/tmp}/flashseq-gpu-session}"

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
# allow_rc="3" run_step ...: exit codes besides 0 that count as done (with the code noted).
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
    if [ "$rc" != 0 ] && [[ " ${allow_rc:-} " == *" $rc "* ]]; then
        verdict="ok (exit $rc allowed)"
    elif [ "$rc" != 0 ]; then
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

# 5. tune the Triton back end over the fused_rnn suite's shapes (LSTM, bfloat16), so the suites
# below run the tuned tiles; --budget keeps the whole session near 10 minutes of GPU time
# (exit 3 = budget reached: the finished workloads are recorded, so it counts as done)
tune_cache="$FLASHSEQ_CACHE_DIR/tune"
if [ "$tune" = 0 ]; then
    note_step tune "skipped (--no-tune): the suites run the plans' own tiles"
else
    if [ -n "$quick" ]; then
        tune_args=(--shapes fused_rnn-tiny -k 2 --budget 45)
    else
        tune_args=(--shapes fused_rnn -k 4 --budget 180)
    fi
    allow_rc="3" run_step tune "$py" -m autotune.cli --gpu auto --ops lstm "${tune_args[@]}" \
        --no-progress --cache "$tune_cache" --json "$out/tune.json" --md "$out/tune.md"
    # the cache file itself (one per device; the newest if an earlier run left others)
    if [ "$dry" = 1 ]; then
        echo "[dry-run] tune-cache: copy the newest $tune_cache/cuda-*.json to $out/tune_cache.json"
    else
        newest="$(ls -t "$tune_cache"/cuda-*.json 2>/dev/null | head -n 1)"
        if [ -n "$newest" ]; then
            cp "$newest" "$out/tune_cache.json"
        else
            note_step tune-cache "no cache file in $tune_cache (nothing was tuned)"
        fi
    fi
fi

# 6. every benchmark suite, peers included, dispatch reading the tuning cache of step 5
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

# 7. the README's table from this folder's tune.json and fused_rnn.json
run_step readme-table "$py" -m bench.readme_table "$out" --out "$out/README_table.md"

[ "$dry" = 1 ] && exit 0

# 8. summary
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
