#!/usr/bin/env bash
# The GPU benchmark as one command (docs/gpu-benchmark.md):
#   bash bench/gpu.sh           on a GPU machine with no network (wheels: make gpu-wheels)
#   bash bench/gpu.sh --tiny    the same steps on a CPU with tiny models, in seconds
# Every step runs under its own limit (7 min 50 s in all on a GPU), so a hang costs one
# step; the report step always runs and says which step failed or ran out of time.
# Env: PYTHON (python3), WORK (scratch folder), RESULTS (bench/results), and OUT: where
# the device tool collects files (the JSON, the table and the logs are copied there).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
PYTHON=${PYTHON:-python3}
WORK=${WORK:-${TMPDIR:-/tmp}/bge-gpu-bench}
RESULTS=${RESULTS:-bench/results}
TINY=
if [ "${1:-}" = "--tiny" ]; then TINY=--tiny; fi
mkdir -p "$WORK"
rm -f "$WORK"/*.json "$WORK"/*.log "$WORK/steps.txt"
exec > >(tee "$WORK/console.log") 2>&1

# Seconds per step: GPU, then tiny (a shared CPU, tests run it).
if [ -z "$TINY" ]; then
    L_INSTALL=40 L_ENV=30 L_BUILD=90 L_INPROCESS=160 L_HTTP=130 L_REPORT=20
else
    L_INSTALL=60 L_ENV=60 L_BUILD=120 L_INPROCESS=240 L_HTTP=240 L_REPORT=60
fi
failed=0

step() {  # step NAME LIMIT COMMAND...: run it under LIMIT seconds, record rc and time
    local name=$1 limit=$2 start rc
    shift 2
    echo "== step $name (limit ${limit} s)"
    start=$(date +%s)
    timeout -k 5 "$limit" "$@"
    rc=$?
    echo "$name $rc $(($(date +%s) - start)) $limit" >>"$WORK/steps.txt"
    if [ "$rc" -ne 0 ]; then
        failed=1
        case $rc in
            124 | 137) echo "== step $name: TIMED OUT after ${limit} s" ;;
            *) echo "== step $name: FAILED (exit $rc)" ;;
        esac
    fi
    return 0
}

part() {  # part NAME LIMIT: one part of bench/gpu.py, told its time
    step "$1" "$2" "$PYTHON" -m bench.gpu "$1" --work "$WORK" --out "$RESULTS" --budget-s "$2" $TINY
}

echo "== bench/gpu.sh ${TINY:-gpu} $(date -u +%FT%TZ) in $PWD"
if command -v nvidia-smi >/dev/null; then timeout 10 nvidia-smi -L; fi

# Only the wheels of packages this machine lacks, into a folder of their own: its torch,
# transformers and numpy are never replaced.
step install "$L_INSTALL" "$PYTHON" -m bench.gpu_wheels install .whl "$WORK/site"
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

part env "$L_ENV"
part build "$L_BUILD"
part inprocess "$L_INPROCESS"
part http "$L_HTTP"
part report "$L_REPORT"

if [ -n "${OUT:-}" ]; then
    # The device tool brings back at most 8 files: the result, its table, the logs.
    for f in "$RESULTS"/gpu-*"$(date -u +%F)".json "$RESULTS"/gpu-*"$(date -u +%F)".md \
        "$WORK"/server-*.log; do
        if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
    done
fi
echo "== bench/gpu.sh done: $([ "$failed" = 0 ] && echo 'every step ok' || echo 'a step failed, see above')"
if [ -n "${OUT:-}" ]; then cp "$WORK/console.log" "$OUT/" 2>/dev/null; fi
exit "$failed"
