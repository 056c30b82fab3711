#!/usr/bin/env bash
# Trains VGG-16 JCDL as the original train_vgg_gs.sh did:
#
#   cd prototxt && bash ./train_vgg_gs.sh
#
# caffe train --solver solver.prototxt
#             --weights ../models/VGG_ILSVRC_16_layers.caffemodel [-gpu 0]
#
# With the GPU build (make cuda: ../build/cuda/build/tools/caffe) it trains on
# GPU 0, when that GPU can be used. Otherwise it uses the CPU build's caffe (../.venv/bin/caffe, else
# caffe on PATH) with a copy of the solver switched to solver_mode CPU
# (a CPU-only caffe aborts on solver_mode GPU): it works, but VGG-16 on a CPU
# takes many seconds per iteration. The log goes to train_vgg_gs.log (LOG=...)
# and snapshots to snapshots/. CAFFE=/path/to/caffe chooses the tool and
# GPU=N the device (-gpu N; without GPU it trains on the CPU).
#
# The LMDBs and mean are the paths in train_val.prototxt (../data/emotion6/...);
# make them with jcdl, from the repository root:
#   jcdl prepare emotion6 EMOTION6_DIR data/emotion6
#   jcdl convert EMOTION6_DIR data/emotion6/train.txt data/emotion6/train_lmdb \
#       --resize_height 256 --resize_width 256        (and test.txt -> test_lmdb)
#   jcdl mean data/emotion6/train_lmdb data/emotion6/mean.binaryproto
set -euo pipefail
cd "$(dirname "$0")"

SOLVER=solver.prototxt
NET=train_val.prototxt
WEIGHTS=../models/VGG_ILSVRC_16_layers.caffemodel
LOG=${LOG:-train_vgg_gs.log}
me=train_vgg_gs.sh
fail=0

if [ ! -f "$WEIGHTS" ]; then
  echo "$me: $WEIGHTS is missing: download VGG_ILSVRC_16_layers.caffemodel" \
       "(Caffe Model Zoo, the VGG team's ILSVRC-2014 16-layer model; see" \
       "models/README.md) into models/" >&2
  fail=1
elif [ ! -s "$WEIGHTS" ]; then
  echo "$me: $WEIGHTS is empty: download it again (models/README.md)" >&2
  fail=1
fi
# every LMDB (source) and mean file (mean_file) the net reads
while read -r key path; do
  if [ "$key" = source ] && [ ! -e "$path/data.mdb" ]; then
    echo "$me: LMDB $path (in $NET) is missing: make it with jcdl prepare" \
         "and jcdl convert (see the top of this script)" >&2
    fail=1
  elif [ "$key" = mean_file ] && [ ! -f "$path" ]; then
    echo "$me: mean file $path (in $NET) is missing: make it with" \
         "jcdl mean (see the top of this script)" >&2
    fail=1
  fi
done < <(sed -n 's/^ *\(source\|mean_file\): "\(.*\)"$/\1 \2/p' "$NET" |
         awk '!seen[$0]++')
[ "$fail" = 0 ] || exit 1

mkdir -p snapshots
if [ -z "${CAFFE:-}" ]; then
  gpu_caffe=../build/cuda/build/tools/caffe
  if [ -x "$gpu_caffe" ] && "$gpu_caffe" device_query -gpu "${GPU:-0}" \
       > /dev/null 2>&1; then
    CAFFE=$gpu_caffe
    GPU=${GPU:-0}
  else
    [ -x "$gpu_caffe" ] && echo "$me: the GPU build cannot use GPU" \
      "${GPU:-0} here (caffe device_query failed)" >&2
    unset GPU
  fi
fi
if [ -z "${CAFFE:-}" ]; then
  if [ -x ../.venv/bin/caffe ]; then
    CAFFE=../.venv/bin/caffe
  else
    CAFFE=$(command -v caffe || true)
  fi
fi
if [ -z "$CAFFE" ]; then
  echo "$me: no caffe found: run make (CPU build) or make cuda (GPU build)" \
       "in the repository root" >&2
  exit 1
fi
if [ -n "${GPU:-}" ]; then
  "$CAFFE" train --solver "$SOLVER" --weights "$WEIGHTS" -gpu "$GPU" 2>&1 \
    | tee "$LOG"
else
  echo "$me: training on the CPU with $CAFFE (no GPU build, make cuda," \
       "or none that can use the GPU)" >&2
  sed 's/^solver_mode: GPU$/solver_mode: CPU/' "$SOLVER" \
    > snapshots/solver_cpu.prototxt
  "$CAFFE" train --solver snapshots/solver_cpu.prototxt \
    --weights "$WEIGHTS" 2>&1 | tee "$LOG"
fi
