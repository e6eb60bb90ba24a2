#!/usr/bin/env bash
# The prepared GPU check (issue 12): one command, <= 8 minutes on one H100 / H200 from a fresh machine.
#
#   benchmarks/gpu_check.sh [--tiny] [--presets A,B,C] [--budget SECONDS] [OUT_DIR]
#
# Writes three files to OUT_DIR (the argument, else $OUT, else out/gpu-check; the device tool brings back 8 at
# most): gpu_check.json (every field present, null where not measured), gpu_check.md, and parts.tar.gz with
# the log and JSON of every part:
#   hashgrid  benchmarks/bench_hashgrid.py: the sdi-paper hash grid's forward + backward points/s, pure PyTorch
#             (autograd, fused backward, torch.compile) and tinycudann when it imports;
#   generate  benchmarks/gpu_generate.py: `sdi generate` (train_run + exports) on a random-weight SD 2.1-base
#             built from the published configs, preset sdi-paper, 100 steps at 512, bf16: s/step by stage,
#             peak memory, syncs in one step (the field compiled if the hashgrid part compiled it);
#   speed     benchmarks/bench_speed.py --scene: the presets' whole training step at 512 render, bf16, eager
#             and with the UNet compiled: s/iteration, UNet calls and images, peak memory, 10k-step projection.
# --tiny: the tiny test model and tiny configs on the CPU, a few steps (CI runs it: tests/test_gpu_check.py).
#
# Install: the device machines have torch (CUDA) but no package registry and no diffusers; carry wheels in
# .whl/ (benchmarks/gpu_check_wheels.sh fills it; pass carry [".whl"]): they are installed into /tmp/sdi-site
# and the project runs from src/ (PYTHONPATH), so no build step is needed. Without .whl/ the installed
# packages are used (CI, or a machine set up with `pip install -e .[sd]`).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TINY=0
PRESETS="sds-threestudio,sdi-paper,sdi-reference"
BUDGET=${GPU_CHECK_BUDGET_S:-460}
DEST=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) TINY=1 ;;
        --presets) PRESETS=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) DEST=$1 ;;
    esac
    shift
done
DEST=${DEST:-${OUT:-out/gpu-check}}
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sdi-gpu-check.XXXXXX")
PY=${PYTHON:-python3}
START=$(date +%s)
COMMAND="benchmarks/gpu_check.sh$([ $TINY = 1 ] && echo ' --tiny') --presets $PRESETS"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sdi-site .whl/*.whl \
        > "$WORK/install.log" 2>&1 || echo "gpu_check.sh: installing .whl/ failed, see install.log" >&2
    export PYTHONPATH="/tmp/sdi-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/nvidia-smi.txt" 2>&1

# run_part NAME CAP_SECONDS COMMAND...: runs under a time limit of min(CAP, what the budget has left).
run_part() {
    local name=$1 cap=$2 t0 left limit rc
    shift 2
    t0=$(date +%s)
    left=$(( BUDGET - (t0 - START) ))
    limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 15 ]; then
        rc=124
        echo "skipped: the budget of $BUDGET s is spent" > "$WORK/$name.log"
    else
        timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
        rc=$?
    fi
    echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}" >> "$WORK/parts.jsonl"
    echo "gpu_check.sh: $name rc=$rc in $(( $(date +%s) - t0 )) s" >&2
}

if [ $TINY = 1 ]; then
    run_part hashgrid 120 "$PY" benchmarks/bench_hashgrid.py --tiny --json "$WORK/hashgrid.json"
    run_part generate 180 "$PY" benchmarks/gpu_generate.py --tiny --quiet --no-export --work "$WORK/generate-work" \
        --json "$WORK/generate.json"
    run_part speed 180 "$PY" benchmarks/bench_speed.py --tiny --presets "$PRESETS" --scene --iters 1 --warmup 0 \
        --compare-compile --json "$WORK/speed.json"
else
    run_part hashgrid 100 "$PY" benchmarks/bench_hashgrid.py --points 1048576 --iters 5 --json "$WORK/hashgrid.json"
    COMPILE_FIELD=--no-compile-field
    "$PY" -c "import json,sys; r={x['variant']: x for x in json.load(open(sys.argv[1]))['rows']}; \
sys.exit('error' in r.get('compiled', {'error': 1}))" "$WORK/hashgrid.json" 2> /dev/null && COMPILE_FIELD=--compile-field
    run_part generate 190 "$PY" benchmarks/gpu_generate.py --steps 100 --resolution 512 $COMPILE_FIELD --quiet \
        --work /tmp/sdi-gpu-check --json "$WORK/generate.json"
    run_part speed 400 "$PY" benchmarks/bench_speed.py --presets "$PRESETS" --scene --render 512 --dtype bf16 \
        --iters 4 --warmup 1 --compare-compile --json "$WORK/speed.json"
fi

"$PY" benchmarks/gpu_check_summary.py "$WORK" --command "$COMMAND" --presets "$PRESETS" --wall-s $(( $(date +%s) - START )) \
    $([ $TINY = 1 ] && echo --tiny) > "$WORK/summary.log" 2>&1 || { cat "$WORK/summary.log" >&2; exit 1; }
cp "$WORK/gpu_check.json" "$WORK/gpu_check.md" "$DEST/"
tar -czf "$DEST/parts.tar.gz" -C "$WORK" --exclude generate-work . && rm -rf "$WORK"
cat "$DEST/gpu_check.md"
