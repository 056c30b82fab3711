#!/usr/bin/env bash
# Everything the GPU machine has to do, in one run of about 7 minutes
# (bench/gpu/README.md): run it there from the repository root with the pack
# of tools/pack_gpu.sh carried (gpu_pack/). Results go to $OUT:
#
#   h200-train-throughput.json  VGG-16 JCDL training, batch 32, 224 x 224, on
#                               generated data: `caffe train` (each engine
#                               variant the build has) against the PyTorch
#                               twin (bench/gpu/torch_twin.py), in this run
#   h200-loss-layers.json       the JCDL loss layers' share of a GPU
#                               iteration, and GPU kernels against the
#                               original's CPU way (loss_layers_bench)
#   h200-gtest.txt              the gtest suite: ours (and the cuDNN layers')
#                               in full on CPU and both GPU types, upstream's
#                               in shards run side by side, each shard's
#                               complete output
#   h200-run.log                this script's log, environment included
#   h200-raw.tar.gz             the raw logs behind the JSON files
#
# usage: bench/gpu/run_h200.sh [PACK]   (PACK: default gpu_pack)
# env:   OUT=DIR (default /tmp/h200-out)
#        BUDGET_S=450   seconds for the whole run; the gtest jobs get what
#                       the benchmarks leave, and a job that would not end
#                       before then is not started (the log names it)
#        BENCH_BUDGET_S=300   seconds the benchmarks may take at most: each
#                       step's limit is cut to what is left, so a hang
#                       cannot eat the gtests' time or the result files
#        PARTS="bench gtest"   what to run (gtest alone: a follow-up run)
#        JOBS="ours cudnn upstream-0 ..."   the gtest jobs (default: all);
#                       a follow-up run gets the list the last run printed
#        SHARDS=42      upstream's tests in this many gtest shards
#        WORKERS=14     gtest processes side by side (one OpenBLAS thread
#                       each)
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 1
pack=${1:-gpu_pack}
OUT=${OUT:-/tmp/h200-out}
budget=${BUDGET_S:-450}
parts=${PARTS:-bench gtest}
shards=${SHARDS:-42}
workers=${WORKERS:-14}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/h200-work.XXXXXX)
t0=$(date +%s)
bench_deadline=$(( t0 + ${BENCH_BUDGET_S:-300} ))
timeouts=0   # steps in a row that ran out of time

elapsed() { echo $(( $(date +%s) - t0 )); }
say() { echo "[run_h200 $(elapsed)s] $*"; }
# limited LIMIT_S LOG CMD...: CMD with a time limit (cut to what is left of
# the benchmarks' budget), its output into LOG
limited() {
  local limit=$1 log=$2; shift 2
  local left=$(( bench_deadline - $(date +%s) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "skipped: the benchmarks' budget is spent" > "$log"
    say "SKIPPED (benchmarks' budget spent): $*"
    return 125
  fi
  timeout -k 5 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    say "TIMED OUT after ${limit}s: $*"
    timeouts=$((timeouts + 1))
  else
    timeouts=0
  fi
  return $rc
}

OURS='*KLLoss*:*DominantLoss*:*Distribution*:*PoolingLayerNaN*'
CUDNN='*CuDNN*'

main() {
  say "start $(date -u +%Y-%m-%dT%H:%M:%SZ) in $root, pack $pack, out $OUT"
  if [ ! -x "$pack/run" ]; then
    say "no $pack/run: make the pack with tools/pack_gpu.sh and carry it"
    return 1
  fi
  chmod +x "$pack/run" "$pack"/bin/* 2>/dev/null  # should a copy drop them
  cp "$pack/BUILD_INFO" "$work/BUILD_INFO"
  cudnn=$(sed -n 's/^USE_CUDNN=//p' "$pack/BUILD_INFO")

  # --- environment -----------------------------------------------------
  say "environment"
  {
    uname -a; cat /etc/os-release 2>/dev/null | head -2
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
    nproc; free -g | head -2
    echo "--- BUILD_INFO"; cat "$pack/BUILD_INFO"
    echo "--- libraries"; "$pack/run" --ldd
  } > "$work/env.txt" 2>&1
  nvidia-smi --query-gpu=name --format=csv,noheader -i 0 > "$work/device.txt" 2>/dev/null
  grep -B1 "=> not found" "$work/env.txt" && say "WARNING: libraries not found (above)"
  cat "$work/env.txt"
  limited 60 "$work/device_query.log" "$pack/run" caffe device_query -gpu 0
  grep -E "Device id|Major revision|Total global memory|Name" "$work/device_query.log" | sed 's/^.*\] //'

  [[ " $parts " == *" bench "* ]] && bench
  [[ " $parts " == *" gtest "* ]] && gtest_jobs
  return 0
}

# --- per-layer profile: caffe time VARIANT MODEL --------------------------
caffe_time() {
  say "caffe time: $1"
  limited 90 "$work/time-$1.log" "$pack/run" caffe time -model "$2" -gpu 0 -iterations 20
  grep -E "Average (Forward|Backward)" "$work/time-$1.log" | sed 's/^.*\] //'
}

# --- the loss layers: GPU kernels against the original's CPU way ----------
loss_layers() {
  say "loss_layers_bench"
  if limited 120 "$work/loss_layers.log" "$pack/run" loss_layers_bench bench/gpu/vgg16_jcdl_b32.prototxt 30 2000; then
    sed -n '/^{/,/^}/p' "$work/loss_layers.log" > "$work/loss_layers.json"
    cat "$work/loss_layers.json"; echo
  else
    tail -20 "$work/loss_layers.log"
  fi
}

# --- the PyTorch twin ------------------------------------------------------
torch_twin() {
  say "torch twin"
  limited 180 "$work/torch.log" python3 bench/gpu/torch_twin.py --json "$work/torch.json"
  tail -5 "$work/torch.log"
}

bench() {
  # --- Caffe training throughput: caffe train, per variant --------------
  variants="default"
  [ "$cudnn" = ON ] && variants="default cudnn_ws64 cudnn_ws256 cudnn_ws1024 cudnn_find cudnn_find_ws1024 cudnn_no_tf32 caffe_engine"
  variants+=" lmdb"
  for v in $variants; do
    solver=bench/gpu/solver_b32.prototxt engine=cudnn env=() ws=8 tf32=allowed
    choice=heuristics data=constant
    [ "$cudnn" = ON ] || { engine=caffe ws="" tf32=off choice=""; }
    case $v in
      cudnn_ws*) ws=${v#cudnn_ws}; env=(CAFFE_CUDNN_WORKSPACE_MB=$ws) ;;
      cudnn_find) env=(CAFFE_CUDNN_FIND=1) choice=measured ;;
      cudnn_find_ws*) ws=${v#cudnn_find_ws}; env=(CAFFE_CUDNN_FIND=1 CAFFE_CUDNN_WORKSPACE_MB=$ws) choice=measured ;;
      cudnn_no_tf32) env=(NVIDIA_TF32_OVERRIDE=0) tf32=off ;;
      caffe_engine) solver=bench/gpu/solver_b32_caffe.prototxt engine=caffe ws="" tf32=off choice="" ;;
      lmdb) solver=bench/gpu/solver_b32_lmdb.prototxt
            data="lmdb: 48 random 256x256 images, crop 224, mirror, Caffe's prefetching Data layer"
            [ -d gpu_pack/bench_lmdb ] || say "no gpu_pack/bench_lmdb: the lmdb variant fails (tools/pack_gpu.sh writes it)" ;;
    esac
    printf '%s\n' "engine=$engine" "solver=$solver" "env=${env[*]:-}" \
      "cudnn_workspace_limit_mib=$ws" "cudnn_algorithm_choice=$choice" "data=$data" \
      "tf32_convolutions=$tf32" > "$work/train-$v.env"
    if [ "$timeouts" -ge 2 ]; then
      say "caffe train: $v skipped (the last two steps ran out of time)"
      echo "skipped: the last two steps ran out of time" > "$work/train-$v.log"
      continue
    fi
    say "caffe train: $v (${env[*]:-} $solver)"
    limited 120 "$work/train-$v.log" env "${env[@]}" "$pack/run" caffe train --solver="$solver" -gpu 0
    grep -E "iter/s" "$work/train-$v.log" | tail -3 | sed 's/^.*\] //'
    # what the issue asks for comes first, right after the default: the
    # PyTorch twin, the loss layers and the default's profile; the other
    # variants (the build's defaults) use what the budget leaves
    if [ "$v" = default ]; then
      torch_twin
      loss_layers
      caffe_time default bench/gpu/vgg16_jcdl_b32.prototxt
    fi
  done
  [ "$cudnn" = ON ] && caffe_time caffe_engine bench/gpu/vgg16_jcdl_b32_caffe.prototxt

  # --- result files -----------------------------------------------------
  python3 bench/gpu/summarize_h200.py throughput --work "$work" --out "$OUT/h200-train-throughput.json"
  python3 bench/gpu/summarize_h200.py loss --work "$work" --out "$OUT/h200-loss-layers.json"
  python3 - "$OUT" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1] + "/h200-train-throughput.json"))
l = json.load(open(sys.argv[1] + "/h200-loss-layers.json"))
print("THROUGHPUT", {k: t.get(k) for k in ("device", "caffe_img_per_s", "torch_img_per_s", "caffe_over_torch", "caffe_best_variant", "caffe_best_over_torch")})
print("VARIANTS", {k: v.get("img_per_s") for k, v in t.get("caffe_variants", {}).items()},
      {k: v.get("img_per_s") for k, v in t.get("torch_variants", {}).items()})
print("LOSS", {k: l.get(k) for k in ("loss_layers_ms_gpu", "loss_layers_ms_cpu_original_way", "share_of_iteration", "share_of_train_step", "cpu_over_gpu_isolated", "cpu_over_gpu_in_net", "error")})
EOF

}

# --- gtest: ours, cuDNN's and upstream's shards, WORKERS at a time ------
# Each job's complete output goes into h200-gtest.txt under a line saying
# its filter, exit status and time. A job is started only while at least
# MIN_JOB_S of the budget is left, and is stopped at the budget's end (its
# output then says TIMED OUT); the jobs not run are listed, with the JOBS=
# that runs just them.
gtest_jobs() {
  local deadline=$(( t0 + budget - 15 )) min_job=${MIN_JOB_S:-45}
  if [ ! -x "$pack/bin/test.testbin" ]; then
    say "the pack has no test.testbin: no gtest run"
    echo "no test.testbin in the pack" > "$OUT/h200-gtest.txt"
    return 0
  fi
  local jobs=${JOBS:-}
  if [ -z "$jobs" ]; then
    jobs="ours cudnn cudnn-find"
    for ((i = 0; i < shards; i++)); do jobs+=" upstream-$i"; done
  fi
  say "gtest: $(echo $jobs | wc -w) jobs, $workers at a time, until $(( deadline - t0 ))s"
  mkdir -p "$work/claims"
  local w pids=()
  for ((w = 0; w < workers; w++)); do
    gtest_worker "$deadline" "$min_job" $jobs &
    pids+=($!)
  done
  wait "${pids[@]}"

  : > "$OUT/h200-gtest.txt"
  local n failed=0 passed=0 left=() cut=()
  for n in $jobs; do
    if [ ! -f "$work/gtest-$n.rc" ]; then left+=("$n"); continue; fi
    local rc secs
    read -r rc secs < "$work/gtest-$n.rc"
    local state="exit $rc"
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && state="TIMED OUT at the budget's end (exit $rc): output cut off"
    {
      echo "######## gtest $n: $(job_what "$n"), strict fp32 (NVIDIA_TF32_OVERRIDE=0); $state; ${secs}s"
      cat "$work/gtest-$n.txt"
      echo
    } >> "$OUT/h200-gtest.txt"
    say "gtest $n: $state, ${secs}s: $(grep -E "^\[  (PASSED|FAILED)  \]|tests? from .* ran" "$work/gtest-$n.txt" | tr '\n' ' ')"
    if [ "$rc" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    # cut off at the deadline or crashed before its summary: run it again
    grep -qE "tests? from .* ran" "$work/gtest-$n.txt" || cut+=("$n")
  done
  if [ ${#left[@]} -gt 0 ]; then
    echo "######## gtest not run (no time left in this run): ${left[*]}" >> "$OUT/h200-gtest.txt"
  fi
  if [ ${#cut[@]} -gt 0 ]; then
    echo "######## gtest cut off before their summary: ${cut[*]}" >> "$OUT/h200-gtest.txt"
  fi
  local again=("${cut[@]}" "${left[@]}")
  if [ ${#again[@]} -gt 0 ]; then
    say "gtest to run again (cut off or not run): PARTS=gtest JOBS=\"${again[*]}\" SHARDS=$shards"
  fi
  say "gtest: $passed passed, $failed did not pass, ${#left[@]} not run"
  grep -h "^\[  FAILED  \] [A-Za-z]" "$work"/gtest-*.txt 2>/dev/null | sort -u | head -40
  return 0
}

# gtest_worker DEADLINE MIN_JOB_S JOB...: runs each job no other worker has
# claimed (mkdir is atomic), while time is left
gtest_worker() {
  local deadline=$1 min_job=$2 n; shift 2
  for n in "$@"; do
    mkdir "$work/claims/$n" 2>/dev/null || continue
    local now; now=$(date +%s)
    if [ $(( deadline - now )) -lt "$min_job" ]; then rmdir "$work/claims/$n"; return 0; fi
    local filter index="" find=0
    case $n in
      ours) filter=$OURS ;;
      cudnn) filter=$CUDNN ;;
      cudnn-find) filter=$CUDNN find=1 ;;
      upstream-*) filter="-$OURS:$CUDNN" index=${n#upstream-} ;;
      *) echo "unknown gtest job $n" > "$work/gtest-$n.txt"; echo "2 0" > "$work/gtest-$n.rc"; continue ;;
    esac
    (
      cd "$pack" || exit 2
      # strict fp32: upstream's tolerances (1e-4 on convolution outputs,
      # GradientChecker 1e-2) assume it; TF32 convolutions (cuDNN's default
      # math on Hopper) would fail them for precision alone
      export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 GTEST_COLOR=no CAFFE_CUDNN_FIND=$find
      export NVIDIA_TF32_OVERRIDE=0 HDF5_USE_FILE_LOCKING=FALSE
      if [ -n "$index" ]; then export GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$index; fi
      timeout -k 5 $(( deadline - now )) ./run test.testbin --gtest_filter="$filter" > "$work/gtest-$n.txt" 2>&1
      echo "$? $(( $(date +%s) - now ))" > "$work/gtest-$n.rc"
    )
  done
}

job_what() {
  case $1 in
    ours) echo "ours ($OURS), CPU and GPU, float and double" ;;
    cudnn) echo "cuDNN layers ($CUDNN), algorithms by cuDNN's heuristics" ;;
    cudnn-find) echo "cuDNN layers ($CUDNN), algorithms measured (CAFFE_CUDNN_FIND=1)" ;;
    upstream-*) echo "upstream shard ${1#upstream-} of $shards (filter -$OURS:$CUDNN, GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=${1#upstream-})" ;;
  esac
}

main 2>&1 | tee "$OUT/h200-run.log"
tar czf "$OUT/h200-raw.tar.gz" -C "$work" . 2>/dev/null
rm -rf "$work"
echo "[run_h200 $(elapsed)s] done: $(ls "$OUT" | tr '\n' ' ')"
