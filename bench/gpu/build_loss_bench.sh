#!/usr/bin/env bash
# Compiles bench/gpu/loss_layers_bench.cpp against a CMake build of Caffe
# (a caffe_KL/build.sh folder, CUDA or CPU flavour) with the caffe tool's
# defines, includes and flags. tools/pack_gpu.sh uses it for the GPU pack;
# the tests build it against the CPU build, where it runs both ways on the
# CPU (a check of the program, not a measurement).
#
# usage: bench/gpu/build_loss_bench.sh BUILD_DIR OUT [RPATH]
#   BUILD_DIR  holds build/ (e.g. build/cuda-pack, build/cpu)
#   OUT        the program to write
#   RPATH      where OUT finds libcaffe when it runs (default $ORIGIN/../lib,
#              the pack's layout)
set -euo pipefail
me=build_loss_bench.sh
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 2 ] || { echo "usage: $me BUILD_DIR OUT [RPATH]" >&2; exit 2; }
bin=$1/build out=$2 rpath=${3:-'$ORIGIN/../lib'}
flags=$bin/tools/CMakeFiles/caffe.bin.dir/flags.make
cache=$bin/CMakeCache.txt
if [ ! -f "$flags" ] || [ ! -f "$cache" ]; then
  echo "$me: $flags is missing: is $1 a CMake build of Caffe?" >&2; exit 1
fi
get() { sed -n "s/^$1 = //p" "$flags"; }
cudart=()
if grep -q '^CPU_ONLY:BOOL=OFF' "$cache"; then
  cudart=(-L"${CUDA_HOME:-/usr/local/cuda}/lib64" -lcudart)
fi
ccache=$(command -v ccache || true)
# shellcheck disable=SC2046  # the flags are several words on purpose
$ccache ${CXX:-g++} $(get CXX_DEFINES) $(get CXX_INCLUDES) $(get CXX_FLAGS) \
  -o "$out" "$root/bench/gpu/loss_layers_bench.cpp" \
  -Wl,--as-needed -L"$bin/lib" -lcaffe -lglog -lgflags -lprotobuf \
  -lboost_system "${cudart[@]}" -Wl,-rpath,"$rpath"
