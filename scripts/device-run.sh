#!/usr/bin/env bash
# Everything that needs a GPU, in as few device calls as possible. Prepare here once with
# scripts/prepare-device-deps.sh, then from this workplace:
#   run(command="scripts/device-run.sh test", carry=[".deps"])    # build-device/: build, cpu + gpu suites, a CUDA cpt run
#   run(command="scripts/device-run.sh bench", carry=[".deps"])   # NF4/QLoRA, 7B forward/backward, 7B generation
#   run(command="scripts/device-run.sh all", carry=[".deps"])     # both (about 10 minutes: may need two calls)
# Each stage's log is written to $OUT (the device tool's result folder) when it is set, else to device-logs/.
# bench reuses build-device/ when a warm machine still has it and builds it otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
logs=${OUT:-device-logs}
mkdir -p "$logs"
export MEDLLM_BUILD_DIR=build-device PYTHON=python3 PY=python3
status=0

run_stage() {  # name, command...
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}

build() {
  if [ ! -f build-device/build.ninja ]; then
    MEDLLM_CTEST_ARGS="-N" scripts/device-build.sh >/dev/null  # configure + build, list the tests only
  fi
  cmake --build build-device -j "$(nproc)"
}

dist_run() {  # nproc backend name: the tiny cpt config on CUDA as nproc processes (torchrun's variables)
  local n=$1 backend=$2 name=$3 port=$((20000 + RANDOM % 20000)) pids=() rc=0
  for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$((n > 1 && backend == "nccl" ? r : 0)) MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      build-device/medllm cpt --config configs/tiny/cpt.yaml --set training.device=cuda --set output="$logs/$name" \
      --backend "$backend" --dist-timeout 120 --resume never >"$logs/$name-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  cat "$logs/$name-rank0.log"
  grep -h '"eval_loss"' "$logs/cpt-tiny-cuda/metrics.jsonl" "$logs/$name/metrics.jsonl" 2>/dev/null | tail -n 4
  return $rc
}

dist_overlap() {  # training.overlap_allreduce on CUDA (NCCL; 2 ranks with 2 GPUs, else 1): off vs on, same adapter
  local n=1 rc=0
  [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && n=2
  for ov in false true; do
    local port=$((20000 + RANDOM % 20000)) pids=()
    for ((r = 0; r < n; r++)); do
      RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port build-device/medllm cpt \
        --config configs/tiny/cpt.yaml --set training.device=cuda --set output="$logs/overlap-$ov" \
        --set training.max_steps=60 --set training.grad_accum=4 --set training.logging_steps=1 \
        --set training.allreduce_bucket_mb=0.01 --set training.overlap_allreduce=$ov --backend nccl \
        --dist-timeout 120 --resume never >"$logs/overlap-$ov-rank$r.log" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    grep -h "gradient all-reduce" "$logs/overlap-$ov-rank0.log"
    python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if "tokens_per_second" in l][5:]; print(sys.argv[2], "tok/s %.0f, all-reduce %.2f ms/step" % (sum(x["tokens_per_second"] for x in r)/len(r), 1000*sum(x.get("allreduce_seconds_per_step",0) for x in r)/len(r)))' "$logs/overlap-$ov/metrics.jsonl" "overlap $ov ($n rank(s)):" || rc=1
  done
  cmp "$logs/overlap-false/adapter/adapter_model.safetensors" "$logs/overlap-true/adapter/adapter_model.safetensors" \
    && echo "adapters: identical" || rc=1
  return $rc
}

eval_shard() {  # eval igakuqa on the quickstart world on cuda:0: one process, then two ranks sharing the GPU
  local args=(eval igakuqa --data-dir configs/quickstart/igakuqa --model configs/quickstart/model --years 2022
    --prompt-format base --mode both --max-new-tokens 12 --max-new-tokens-explanation 48)
  local port=$((20000 + RANDOM % 20000)) pids=() rc=0
  build-device/medllm "${args[@]}" --output "$logs/eval-cuda-1" >"$logs/eval-cuda-1.log" 2>&1 || return 1
  for r in 0 1; do
    build-device/medllm "${args[@]}" --world-size 2 --rank $r --local-rank 0 --master-addr 127.0.0.1 \
      --master-port $port --backend gloo --output "$logs/eval-cuda-2" >"$logs/eval-cuda-2-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  tail -n 3 "$logs/eval-cuda-1.log" "$logs/eval-cuda-2-rank0.log"
  cmp "$logs/eval-cuda-1/predictions.jsonl" "$logs/eval-cuda-2/predictions.jsonl" && echo "predictions: identical"
  return $rc
}

prefs_shard() {  # build-prefs (sampled) on the quickstart model on cuda:0: one process, then two ranks sharing the GPU
  local args=(build-prefs --questions configs/quickstart/past_exams/past.jsonl --model configs/quickstart/model
    --template ja --prompt-format base -n 4 --temperature 1.0 --max-new-tokens 48 --batch-size 6
    --set 'guard.eval_exams=[115,116]' --device cuda)
  local port=$((20000 + RANDOM % 20000)) pids=() rc=0
  build-device/medllm "${args[@]}" --output "$logs/prefs-cuda-1" >"$logs/prefs-cuda-1.log" 2>&1 || return 1
  for r in 0 1; do
    build-device/medllm "${args[@]}" --world-size 2 --rank $r --local-rank 0 --master-addr 127.0.0.1 \
      --master-port $port --backend gloo --output "$logs/prefs-cuda-2" >"$logs/prefs-cuda-2-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  tail -n 3 "$logs/prefs-cuda-1.log" "$logs/prefs-cuda-2-rank0.log"
  # samples.jsonl: finishing order in one process, question order from two: the same records as sets.
  cmp <(sort "$logs/prefs-cuda-1/samples.jsonl") <(sort "$logs/prefs-cuda-2/samples.jsonl") && echo "samples: identical"
  cmp "$logs/prefs-cuda-1/pairs.jsonl" "$logs/prefs-cuda-2/pairs.jsonl" && echo "pairs: identical" || rc=1
  return $rc
}

case "$stage" in
  test|all)
    run_stage test scripts/device-build.sh
    # A QLoRA training run on the GPU: the tiny config's 30 steps with the NF4 base in CUDA kernels, then the
    # same run resumed from its last checkpoint (nothing left to do: exit 0 without training again).
    run_stage cpt-cuda build-device/medllm cpt --config configs/tiny/cpt.yaml --set training.device=cuda \
        --set output="$logs/cpt-tiny-cuda"
    run_stage cpt-cuda-resume build-device/medllm cpt --config configs/tiny/cpt.yaml --set training.device=cuda \
        --set output="$logs/cpt-tiny-cuda"
    # RPO on the GPU: the tiny config with the NF4 base (QLoRA), bf16, the reference precomputed, then resumed.
    run_stage rpo-cuda build-device/medllm rpo --config configs/tiny/rpo.yaml --set training.device=cuda \
        --set lora.quantize_base=true --set output="$logs/rpo-tiny-cuda"
    run_stage rpo-cuda-resume build-device/medllm rpo --config configs/tiny/rpo.yaml --set training.device=cuda \
        --set lora.quantize_base=true --set output="$logs/rpo-tiny-cuda"
    # Data parallelism on the GPU (src/train/distributed.cpp): ProcessGroupNCCL with one process (the group is
    # built when --backend is named), two processes with Gloo over CUDA tensors, and two NCCL processes when the
    # machine has two GPUs; each prints its validation losses after those of the one-process run above.
    run_stage cpt-nccl-1 dist_run 1 nccl cpt-nccl-1
    run_stage cpt-gloo-cuda-2 dist_run 2 gloo cpt-gloo-cuda-2
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then run_stage cpt-nccl-2 dist_run 2 nccl cpt-nccl-2; fi
    # Sharded generation on the GPU: two ranks share the questions and must write the one-process file.
    run_stage eval-shard-cuda eval_shard
    run_stage prefs-shard-cuda prefs_shard ;;&
  bench|all)
    run_stage build build
    run_stage bench-nf4 scripts/bench-nf4.sh cuda
    run_stage bench-model env MEDLLM_BENCH_BIN=build-device/bench_model scripts/bench-model.sh 7b cuda bf16
    run_stage bench-generate env MEDLLM=build-device/medllm scripts/bench-generate.sh --gpu
    run_stage bench-dist-overlap dist_overlap ;;
  test) ;;
  *) echo "device-run.sh: stage must be test, bench or all, got '$stage'" >&2; exit 2 ;;
esac
exit $status
