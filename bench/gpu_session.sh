#!/usr/bin/env bash
# The one GPU entry point: runs the GPU checks in order of value, each under its own time limit
# when a budget is given, and writes the results under bench/results/<gpu-slug>/ (slug from
# nvidia-smi's GPU name, e.g. nvidia-h200) after every step.
#
# A GPU session that is lent one machine for ~15 minutes (one command of at most 600 s) runs
# exactly this first, and gets SUMMARY.md and gpu_results.tgz (every result and log) back:
#
#   bash bench/gpu_session.sh --budget 540 --pack "$OUT"        # with the run's timeout_s 600
#
# (FLASHSEQ_COMMIT=<sha> in front names the commit in SUMMARY.md where .git does not travel.)
#
#   bash bench/gpu_session.sh [--budget S] [--pack DIR] [--out DIR] [--tiny] [--dry-run]
#                             [--suites "A B"] [--no-tune] [--limit STEP=S ...]
#     --budget S   finish within S seconds: each step runs under `timeout` with the smaller of
#                  its own cap and what is left (less a reserve for the summary); a step whose
#                  minimum no longer fits is skipped, and SUMMARY.md says so. Without it no
#                  step has a limit (the old full run).
#     --pack DIR   after every step, copy SUMMARY.md to DIR and pack the results folder into
#                  DIR/gpu_results.tgz (two files: fits a size-limited return folder such as $OUT)
#     --out DIR    results folder instead of bench/results/<gpu-slug>
#     --tiny       tiny benchmark sizes: checks the pipeline end to end, the numbers mean little
#     --dry-run    print the plan (steps, commands, per-step limits) without running anything
#     --suites     only these benchmark suites in the last tier (default: every suite)
#     --no-tune    skip the flashseq-tune step (the suites then run the untuned plans)
#     --limit S=N  cap step S at N seconds (repeatable; e.g. a quicker smoke)
#
# Steps, most valuable first (cap / minimum seconds under --budget):
#   peers 40/10 (only with wheels)   environment 30/10
#   smoke 180/30            python -m bench.gpu_smoke --strict: triton and cuda back ends
#                           (FLASHSEQ_CUDA_KERNELS=1), no_grad forward, forward + gradients vs
#                           float64, one small case per cell and dtype, then the sanitizer's and
#                           the headline's shapes; cases in parallel processes, so the builds
#                           overlap and are cached for the later steps (smoke.json/.md per case)
#   sanitizer 90/30         compute-sanitizer memcheck over python -m bench.gpu_sanitize: CUDA
#                           forward, backward, barrier floor, Triton fused
#   headline-fused_rnn 150/45  python -m bench fused_rnn --headline (LSTM H=768 NH=1 vs cuDNN,
#                           NH=12 x 64 vs FlashRNN, GRU vs cuDNN), cuda and triton
#   pytest-gpu-quick 120/45 pytest -m "gpu and not slow", the LSTM cases of the fused_rnn kernel
#                           tests, bench and hardware tests (both pytest steps with -n 8 when
#                           pytest-xdist is there; $FLASHSEQ_SESSION_PYTEST_WORKERS changes 8)
#   sanitizer-racecheck 60/30, sanitizer-tests 90/30 (tests marked "sanitizer" under memcheck)
#   pytest-gpu 600/90       pytest -m gpu --runslow, everything
#   tune 210/60             flashseq-tune --gpu auto over the fused_rnn shapes (its own
#                           --budget fits the step's limit; exit 3 = budget reached = done)
#   bench-<suite> 150/45    every `python -m bench` suite (microbench 240/60, three runs)
#   readme-table 20/5       python -m bench.readme_table
# Every step runs even when an earlier one failed; a step cut by its limit is "TIMED OUT" in
# SUMMARY.md. Exit status: 0 every step that ran passed, 1 a step failed or timed out, 2 usage.
#
# Caches: FLASHSEQ_CACHE_DIR is the session's own folder ($FLASHSEQ_SESSION_CACHE, default
# $TMPDIR/flashseq-gpu-session), so first-use builds are shared by every step and dispatch in
# the suites reads exactly the tuning this session recorded.
# Peers (flashrnn, flash-linear-attention, ...) travel as wheels in .whl/ (or the folder in
# $FLASHSEQ_PEER_WHEELS): installed with --no-index --no-deps into a private folder first on
# PYTHONPATH, so nothing is downloaded and the machine's torch stays.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
usage="allowed: --budget S --pack DIR --out DIR --tiny --dry-run --suites LIST --no-tune --limit STEP=S"
quick=""
dry=0
out=""
pack=""
only_suites=""
tune=1
budget=0
declare -A cap_override=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) quick="--tiny" ;;
        --dry-run) dry=1 ;;
        --out) shift; out="${1:?--out needs a folder}" ;;
        --pack) shift; pack="${1:?--pack needs a folder}" ;;
        --suites) shift; only_suites="${1:?--suites needs suite names}" ;;
        --no-tune) tune=0 ;;
        --budget)
            shift; budget="${1:-}"
            [[ "$budget" =~ ^[0-9]+$ ]] && [ "$budget" -ge 60 ] || {
                echo "gpu_session: --budget needs whole seconds >= 60; got '$budget'" >&2; exit 2; } ;;
        --limit)
            shift
            [[ "${1:-}" =~ ^([a-z0-9_-]+)=([0-9]+)$ ]] || {
                echo "gpu_session: --limit needs STEP=SECONDS; got '${1:-}'" >&2; exit 2; }
            cap_override[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]} ;;
        -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
        *) echo "gpu_session: unknown argument '$1' ($usage)" >&2; exit 2 ;;
    esac
    shift
done

py="${PYTHON:-python3}"
# Timings under the Triton interpreter would be meaningless; it is for CPU-only test runs.
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1
export FLASHSEQ_CACHE_DIR="${FLASHSEQ_SESSION_CACHE:-${TMPDIR:-/tmp}/flashseq-gpu-session}"
RESERVE=15  # seconds kept for the summary and the pack after the last step
t0=$(date +%s)

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
[ "$dry" = 1 ] || [ -z "$pack" ] || mkdir -p "$pack"

steps_table=""
failed=0
timed_out=0
dry_used=0      # dry run: the seconds the plan has handed out so far
dry_steps=0

# left_s: seconds of the budget still free for steps (a large number without a budget)
left_s() {
    if [ "$budget" = 0 ]; then echo 999999; return; fi
    local used
    if [ "$dry" = 1 ]; then used=$dry_used; else used=$(( $(date +%s) - t0 )); fi
    echo $(( budget - RESERVE - used ))
}

write_summary() {
    [ "$dry" = 1 ] && return 0
    local commit dirty
    commit="$(git rev-parse HEAD 2>/dev/null || echo "${FLASHSEQ_COMMIT:-unknown (no git here)}")"
    dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | head -n 1)"
    {
        echo "# GPU session: $gpu_name"
        echo
        echo "- commit: $commit${dirty:+ (dirty tree)}"
        echo "- GPU: $gpu_name, driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
        echo "- time (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - t0 )) s since the start"
        echo "- command: bash bench/gpu_session.sh $cmdline"
        echo "- budget: $([ "$budget" = 0 ] && echo none || echo "$budget s (steps get at most $((budget - RESERVE)) s)")"
        echo
        echo '```'
        cat "$logs/environment.log" 2>/dev/null
        echo '```'
        echo
        echo "| step | command | exit | result | seconds | limit |"
        echo "|---|---|---|---|---|---|"
        printf '%s' "$steps_table"
        echo
        echo "$failed step(s) failed, $timed_out timed out. Logs: $logs/"
        if [ -n "${1:-}" ]; then echo "$1"; fi
    } > "$out/SUMMARY.md.tmp" && mv "$out/SUMMARY.md.tmp" "$out/SUMMARY.md"
    if [ -n "$pack" ]; then
        cp "$out/SUMMARY.md" "$pack/SUMMARY.md.tmp" && mv "$pack/SUMMARY.md.tmp" "$pack/SUMMARY.md"
        tar -czf "$pack/gpu_results.tgz.tmp" -C "$(dirname "$out")" "$(basename "$out")" 2>/dev/null \
            && mv "$pack/gpu_results.tgz.tmp" "$pack/gpu_results.tgz"
    fi
}

# note_step NAME TEXT: a step that did not run, with the reason (in SUMMARY.md too).
note_step() {
    echo "=== $1: $2"
    steps_table+="| $1 | - | - | $2 | - | - |"$'\n'
    write_summary
}

# run_step NAME CAP MIN CMD...: run CMD (output on the console and in logs/NAME.log) under
# `timeout` with the smaller of CAP (or --limit NAME=N) and the budget left; skipped with a
# note when less than MIN is left. allow_rc="3" run_step ...: exit codes that count as done.
run_step() {
    local name="$1" cap="$2" min="$3"; shift 3
    cap="${cap_override[$name]:-$cap}"
    local left lim
    left=$(left_s)
    if [ "$budget" != 0 ] && [ "$left" -lt "$min" ]; then
        local why="skipped: budget: ${left} s left < ${min} s this step needs"
        [ "$dry" = 1 ] && why="$why (runs if the steps before end early)"
        note_step "$name" "$why"
        return 0
    fi
    lim=$(( left < cap ? left : cap ))
    if [ "$dry" = 1 ]; then
        if [ "$budget" = 0 ]; then
            echo "[dry-run] $name: $*  [no limit]"
        else
            dry_used=$(( dry_used + lim )); dry_steps=$((dry_steps + 1))
            echo "[dry-run] $name: $*  [limit ${lim} s, ends by ${dry_used} s]"
        fi
        return 0
    fi
    local -a guard=()
    [ "$budget" = 0 ] || guard=(timeout -k 10 "$lim")
    echo "=== $name: $*${guard:+ (limit $lim s)}"
    local start end rc verdict="ok"
    start=$(date +%s)
    "${guard[@]}" "$@" 2>&1 | tee "$logs/$name.log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s)
    if [ "$budget" != 0 ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; }; then
        verdict="TIMED OUT at its ${lim} s limit"
        timed_out=$((timed_out + 1))
    elif [ "$rc" != 0 ] && [[ " ${allow_rc:-} " == *" $rc "* ]]; then
        verdict="ok (exit $rc allowed)"
    elif [ "$rc" != 0 ]; then
        verdict="FAILED"
        failed=$((failed + 1))
    fi
    echo "=== $name: exit $rc ($verdict) after $((end - start)) s"
    steps_table+="| $name | \`$*\` | $rc | $verdict | $((end - start)) | $([ "$budget" = 0 ] && echo - || echo "$lim") |"$'\n'
    write_summary
}

cmdline="$quick"
[ "$budget" = 0 ] || cmdline+=" --budget $budget"
[ -z "$pack" ] || cmdline+=" --pack $pack"
[ -z "$only_suites" ] || cmdline+=" --suites \"$only_suites\""
[ "$tune" = 1 ] || cmdline+=" --no-tune"
opt_in=(env FLASHSEQ_CUDA_KERNELS=1)

# 0. peers, offline
wheels="${FLASHSEQ_PEER_WHEELS:-.whl}"
peer_dir="${TMPDIR:-/tmp}/flashseq-peers"
if compgen -G "$wheels/*.whl" > /dev/null; then
    run_step peers 40 10 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$peer_dir" "$wheels"/*.whl
    export PYTHONPATH="$peer_dir${PYTHONPATH:+:$PYTHONPATH}"
else
    note_step peers "no wheels in $wheels/; peers that are not installed show as skipped rows"
fi
run_step environment 30 10 "$py" -m bench --machine

# 1. correctness of every back end first: nothing else is worth reading if these fail
run_step smoke 180 30 "${opt_in[@]}" "$py" -m bench.gpu_smoke --strict \
    --json "$out/smoke.json" --md "$out/smoke.md"
have_sanitizer=1
if [ "$dry" = 0 ] && ! command -v compute-sanitizer > /dev/null; then
    have_sanitizer=0
    failed=$((failed + 1))
    note_step sanitizer "FAILED: compute-sanitizer is not on PATH"
else
    run_step sanitizer 90 30 "${opt_in[@]}" compute-sanitizer --tool memcheck --error-exitcode 86 \
        --target-processes all "$py" -m bench.gpu_sanitize
    # some sandboxes (gVisor) have no sanitizer support: say so, and spend no more time on it
    if [ "$dry" = 0 ] && grep -q "Device not supported" "$logs/sanitizer.log" 2>/dev/null; then
        have_sanitizer=0
        note_step sanitizer-note "compute-sanitizer refused this device ('Device not supported'):" \
            "a limit of this machine, no verdict on the kernels; the other sanitizer steps skipped"
    fi
fi

# 2. the numbers the README quotes
run_step headline-fused_rnn 150 45 "${opt_in[@]}" "$py" -m bench fused_rnn --headline $quick \
    --no-progress --json "$out/fused_rnn_headline.json" --md "$out/fused_rnn_headline.md"

# 3. GPU tests, a reduced selection first; with pytest-xdist (on the GPU image) in parallel
# processes, so the first-use builds of different tests overlap
workers=()
if [ "$dry" = 1 ] || "$py" -c "import xdist" 2> /dev/null; then
    workers=(-n "${FLASHSEQ_SESSION_PYTEST_WORKERS:-8}")
fi
run_step pytest-gpu-quick 120 45 "$py" -m pytest -v -m "gpu and not slow" \
    -k "lstm or bench or hardware" -p no:cacheprovider "${workers[@]}" \
    tests/kernels/test_fused_rnn_cuda.py tests/kernels/test_fused_rnn_triton.py tests/bench \
    tests/test_hardware.py

# 4. the rest of the sanitizer cases: shared-memory races of the CUDA kernels, the tests marked
# "sanitizer" under memcheck
if [ "$have_sanitizer" = 1 ]; then
    run_step sanitizer-racecheck 60 30 "${opt_in[@]}" compute-sanitizer --tool racecheck \
        --error-exitcode 86 --target-processes all "$py" -m bench.gpu_sanitize --only cuda
    run_step sanitizer-tests 90 30 compute-sanitizer --tool memcheck --error-exitcode 86 \
        --target-processes all "$py" -m pytest -q -m sanitizer -p no:cacheprovider tests/kernels
fi

# 5. every GPU test
run_step pytest-gpu 600 90 "$py" -m pytest -q -m gpu --runslow -p no:cacheprovider "${workers[@]}"

# 6. tune the Triton back end over the fused_rnn suite's shapes (LSTM, bfloat16), so the suites
# below run the tuned tiles (exit 3 = its own budget reached: what finished is recorded)
tune_cache="$FLASHSEQ_CACHE_DIR/tune"
if [ "$tune" = 0 ]; then
    note_step tune "skipped (--no-tune): the suites run the plans' own tiles"
else
    tune_cap="${cap_override[tune]:-210}"
    tune_left=$(left_s)
    [ "$tune_left" -lt "$tune_cap" ] && tune_cap=$tune_left
    if [ -n "$quick" ]; then
        tune_args=(--shapes fused_rnn-tiny -k 2 --budget $(( tune_cap > 75 ? 45 : tune_cap - 30 > 10 ? tune_cap - 30 : 10 )))
    else
        tune_args=(--shapes fused_rnn -k 4 --budget $(( tune_cap > 210 ? 180 : tune_cap - 30 > 10 ? tune_cap - 30 : 10 )))
    fi
    allow_rc="3" run_step tune 210 60 "$py" -m autotune.cli --gpu auto --ops lstm "${tune_args[@]}" \
        --no-progress --cache "$tune_cache" --json "$out/tune.json" --md "$out/tune.md"
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

# 7. every benchmark suite, peers included, dispatch reading the tuning cache of step 6
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
    runs="" cap=150 min=45
    [ "$suite" = microbench ] && runs="--runs 3" cap=240 min=60
    run_step "bench-$suite" $cap $min "$py" -m bench "$suite" $quick $runs --no-progress \
        --json "$out/$suite.json" --md "$out/$suite.md" --png "$out/$suite.png"
done

# 8. the README's table from this folder's tune.json and fused_rnn.json
if [ "$dry" = 0 ] && [ ! -e "$out/fused_rnn.json" ] && [ ! -e "$out/tune.json" ]; then
    note_step readme-table "skipped: neither fused_rnn.json nor tune.json was written"
else
    run_step readme-table 20 5 "$py" -m bench.readme_table "$out" --out "$out/README_table.md"
fi

if [ "$dry" = 1 ]; then
    [ "$budget" = 0 ] || echo "[dry-run] plan: $dry_steps step(s) within the budget, limits sum to" \
        "$dry_used s of $budget s ($RESERVE s kept for the summary)"
    exit 0
fi
write_summary "Finished in $(( $(date +%s) - t0 )) s."
grep '^|' "$out/SUMMARY.md"  # the step table, for a caller that reads only the console
echo "=== summary: $out/SUMMARY.md ($failed step(s) failed, $timed_out timed out)${pack:+; packed into $pack}"
[ "$failed" = 0 ] && [ "$timed_out" = 0 ]
