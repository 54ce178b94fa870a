#!/usr/bin/env bash
# Every GPU figure in one command: the training-step overhead, the inference passes and the meta-training
# throughput on CUDA, each eager and compiled (torch.compile, inductor), written to
# benchmarks/results/gpu-overhead.json, gpu-inference.json and gpu-meta_train_scaling.json.
#
#   bash benchmarks/gpu.sh [--device cuda[:N]] [--results_dir DIR] [--smoke]
#
# Without a CUDA device the first script refuses (exit 2, "sees no CUDA device") and nothing is written.
# --smoke: tiny settings and the aot_eager backend (no code generation): checks that the pipeline runs, its
# figures mean nothing. --device cpu with --smoke runs the same pipeline on CPU, into <device>-*.json files.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
results_dir=benchmarks/results
smoke=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="${2:?--device needs a value}"; shift 2 ;;
    --results_dir|--results-dir) results_dir="${2:?--results_dir needs a value}"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (see bash benchmarks/gpu.sh --help)" >&2; exit 2 ;;
  esac
done

prefix=gpu
[[ "$device" == cuda* ]] || prefix="$device"
python=${PYTHON:-python}
if (( smoke )); then
  overhead=(--steps 1 --warmup 0 --batch 4 --no-memory --compile-backend aot_eager)
  inference=(--batch 4 --repeats 1 --mc-repeats 1 --warmup 0 --k 2 --small-batch 2 --mc-check 2
             --compile-backend aot_eager)
  meta_train=(--tasks 2 --steps 1 --batch_size 4 --compile-backend aot_eager)
else
  overhead=(--steps 20 --warmup 5)
  inference=()
  meta_train=(--tasks 4 --steps 20)
fi

step() {  # step NAME COMMAND...: run one benchmark; on failure name it and stop with its exit code
  local name=$1
  shift
  echo "== gpu.sh: $name" >&2
  local rc=0
  "$@" || rc=$?
  if (( rc )); then
    echo "gpu.sh: $name failed (exit $rc); the benchmarks after it were not run" >&2
    exit "$rc"
  fi
}

step overhead "$python" benchmarks/overhead.py --device "$device" --compile "${overhead[@]}" \
  --results_file "$results_dir/$prefix-overhead.json"
step inference "$python" benchmarks/inference.py --device "$device" --compile "${inference[@]}" \
  --results_file "$results_dir/$prefix-inference.json"
step meta_train_scaling "$python" benchmarks/meta_train_scaling.py --device "${device%%:*}" --compile \
  "${meta_train[@]}" --results_file "$results_dir/$prefix-meta_train_scaling.json"
echo "gpu.sh: done; results in $results_dir/$prefix-{overhead,inference,meta_train_scaling}.json (or beside each, named for the device, where one of another device was there)" >&2
