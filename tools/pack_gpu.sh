#!/usr/bin/env bash
# Packs a CUDA build of Caffe (caffe_KL/build.sh cuda) for the GPU machine
# (../shared/GPU.md: Ubuntu 24.04 with CUDA 13, cuDNN 9 in PyTorch's pip
# wheels, OpenBLAS, hdf5 1.10 and protobuf 3.21, but no glog, gflags, lmdb,
# leveldb, snappy, OpenCV or compiled boost) into one folder that travels
# with the run (`carry`), 64 MiB at most:
#
#   bin/caffe, bin/test.testbin (when built), bin/loss_layers_bench
#                (bench/gpu/loss_layers_bench.cpp, compiled here)
#   lib/         libcaffe and every shared library they need that the GPU
#                machine does not have (ldd here, minus glibc, libstdc++,
#                CUDA, cuDNN, OpenBLAS, hdf5 and protobuf 3.21 with all that
#                those need themselves)
#   src/caffe/test/test_data/, examples/images/
#                the files upstream's tests open by relative path: run the
#                tests with this folder as the working directory
#   bench_lmdb/  the LMDB of the benchmark's lmdb net (48 random images,
#                bench/gpu/make_prototxts.py --lmdb), which reads it as
#                gpu_pack/bench_lmdb from the repository root
#   run          the launcher: run TOOL ARGS... sets LD_LIBRARY_PATH (this
#                lib/, the CUDA toolkit, cuDNN's and NCCL's pip wheels) and
#                runs bin/TOOL
#   BUILD_INFO   the build's options, the packed files and the size
#
# usage: tools/pack_gpu.sh [BUILD_DIR [OUT_DIR]]
#        tools/pack_gpu.sh --write-launcher FILE   (the launcher alone)
#   BUILD_DIR  a CUDA flavour folder of caffe_KL/build.sh, holding src/ and
#              build/ (default build/cuda)
#   OUT_DIR    default gpu_pack (ignore it in git; name it in `carry`)
# env: PACK_LIMIT_MIB=64   the most the folder may hold
#      CUDA_HOME=/usr/local/cuda
# A build that links OpenCV cannot travel (its libraries need about 210 MiB
# of others on Debian 12): build the pack with -DUSE_OPENCV=OFF (see
# bench/gpu/README.md).
set -euo pipefail

me=pack_gpu.sh
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${1:-build/cuda}
out=${2:-gpu_pack}
limit_mib=${PACK_LIMIT_MIB:-64}
cuda=${CUDA_HOME:-/usr/local/cuda}

die() { echo "$me: $*" >&2; exit 1; }

write_launcher() {  # write_launcher FILE: the pack's run
cat > "$1" <<'EOF'
#!/usr/bin/env bash
# usage: run TOOL [ARGS...]   TOOL: caffe, test.testbin or loss_layers_bench
#        run --ldd            the libraries each program finds
# Runs bin/TOOL with this pack's libraries, the CUDA toolkit's, cuDNN's and
# NCCL's (multi-GPU training: libcaffe needs it when built with NCCL). Each
# of cuDNN and NCCL, unless the toolkit has it: CUDNN_LIB_DIR / NCCL_LIB_DIR,
# else the nvidia-cudnn / nvidia-nccl pip wheel (PyTorch's, then python3's),
# else the first libcudnn.so.9 / libnccl.so.2 under /opt, /usr/local or
# /usr/lib. A library bin/TOOL needs that none of these has is named.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tool=${1:?usage: run TOOL [ARGS...] (or run --ldd)}; shift
if [ "$tool" != --ldd ] && [ ! -x "$here/bin/$tool" ]; then
  echo "run: no such tool: $tool (have: $(ls "$here/bin" | tr '\n' ' '))" >&2; exit 2
fi
libs=$here/lib
cuda=${CUDA_HOME:-/usr/local/cuda}
for d in "$cuda/lib64" "$cuda/targets/x86_64-linux/lib"; do
  [ -d "$d" ] && libs=$libs:$d
done
# add_lib VAR MODULE SONAME: the folder in $VAR, else the nvidia-MODULE pip
# wheel's lib/ (PyTorch's venv in /opt/torch, then python3's), else the first
# SONAME under /opt, /usr/local or /usr/lib; nothing when a folder already
# in $libs has SONAME and VAR is not set
add_lib() {
  local dir=${!1:-} d found
  if [ -z "$dir" ]; then
    for d in ${libs//:/ }; do [ -e "$d/$3" ] && return 0; done
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/"$2"/lib; do
      [ -e "$d/$3" ] && dir=$d
    done
  fi
  if [ -z "$dir" ] && command -v python3 >/dev/null; then
    dir=$(python3 -c 'import os, sys, importlib; m = importlib.import_module("nvidia." + sys.argv[1]); print(os.path.join(list(m.__path__)[0], "lib"))' "$2" 2>/dev/null || true)
    [ -e "$dir/$3" ] || dir=
  fi
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then  # anywhere
    found=$(find /opt /usr/local /usr/lib -name "$3" 2>/dev/null | head -1)
    [ -n "$found" ] && dir=$(dirname "$found")
  fi
  if [ -n "$dir" ] && [ -d "$dir" ]; then libs=$libs:$dir; fi
  return 0
}
add_lib CUDNN_LIB_DIR cudnn libcudnn.so.9
add_lib NCCL_LIB_DIR nccl libnccl.so.2
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [ "$tool" = --ldd ]; then  # what each program resolves with these paths
  for f in "$here"/bin/*; do echo "== $f"; ldd "$f"; done
  exit 0
fi
missing=$(ldd "$here/bin/$tool" 2>/dev/null | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "run: bin/$tool needs ${missing% } and no folder has it: $LD_LIBRARY_PATH" \
       "(CUDNN_LIB_DIR / NCCL_LIB_DIR name cuDNN's / NCCL's)" >&2
  exit 127
fi
exec "$here/bin/$tool" "$@"
EOF
chmod +x "$1"
}

if [ "${1:-}" = --write-launcher ]; then  # the launcher alone (tests)
  write_launcher "${2:?usage: pack_gpu.sh --write-launcher FILE}"; exit 0
fi

bin=$build/build
cache=$bin/CMakeCache.txt
[ -f "$cache" ] || die "no CUDA build in $build ($cache is missing): build one" \
  "first with 'make cuda' (caffe_KL/build.sh cuda)"
opt() { sed -n "s/^$1:[A-Z]*=//p" "$cache" | head -1; }
[ "$(opt CPU_ONLY)" = OFF ] || die "$build is a CPU-only build (CPU_ONLY=$(opt CPU_ONLY)):" \
  "pack the CUDA one ('make cuda' builds it into build/cuda)"
[ -x "$bin/tools/caffe" ] || die "$bin/tools/caffe is missing: finish the build" \
  "(caffe_KL/build.sh cuda)"
libcaffe=$(ls "$bin"/lib/libcaffe.so.* 2>/dev/null | head -1)
[ -n "$libcaffe" ] || die "$bin/lib/libcaffe.so.* is missing: finish the build"
command -v ldd >/dev/null || die "ldd is missing"

stage=$(dirname "$out")/.$(basename "$out").partial-$$
trap 'rm -rf "$stage"' EXIT
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"

# 1. our programs
cp "$bin/tools/caffe" "$stage/bin/"
if [ -x "$bin/test/test.testbin" ]; then
  cp "$bin/test/test.testbin" "$stage/bin/"
else
  echo "$me: no $bin/test/test.testbin (caffe_KL/build.sh cuda test.testbin):" \
       "packing without the gtest suite" >&2
fi
cp "$libcaffe" "$stage/lib/$(basename "$libcaffe")"

# 2. the shared libraries the GPU machine lacks. What it has: the libraries
# these patterns name, and everything they need in turn (resolved here).
present_re='^(ld-linux|libc\.so|libm\.so|libmvec\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libanl\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libcurand\.so|libcufft\.so|libcusparse\.so|libcusolver\.so|libnvrtc\.so|libnvJitLink\.so|libcudnn[a-z_]*\.so|libnccl\.so|libopenblas\.so|libgfortran\.so|libquadmath\.so|libhdf5[a-z_]*\.so|libprotobuf\.so\.32$)'
deps() {  # "name path" of every library that ldd resolves for the files
  for f in "$@"; do ldd "$f"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u
}
to_carry() {  # the libraries of deps' output that the GPU machine lacks
  local all=$1 roots present
  roots=$(echo "$all" | awk -v re="$present_re" '$1 ~ re {print $2}')
  # shellcheck disable=SC2086
  present=$( { echo "$all" | awk -v re="$present_re" '$1 ~ re {print $1}';
               [ -z "$roots" ] || deps $roots | awk '{print $1}'; } | sort -u)
  echo "$all" | awk 'NR == FNR {have[$1] = 1; next} !($1 in have)' \
    <(echo "$present") - | grep -v "^libcaffe\.so" || true
}
missing=$(for f in "$stage"/bin/* "$libcaffe"; do ldd "$f"; done | awk '/not found/ {print $1}' | sort -u)
# shellcheck disable=SC2086
[ -z "$missing" ] || die "ldd finds no $(echo $missing) here: fix the build first"
carry=$(to_carry "$(deps "$stage"/bin/* "$libcaffe")")
if echo "$carry" | grep -q '^libopencv'; then
  mib=$(echo "$carry" | awk '{print $2}' | xargs stat -L -c %s | awk '{s += $1} END {printf "%.0f", s / 1048576}')
  die "$build links OpenCV, whose libraries need ${mib} MiB of others that" \
      "the GPU machine lacks (limit ${limit_mib} MiB): build the pack with" \
      "-DUSE_OPENCV=OFF (bench/gpu/README.md says how)"
fi

# 3. the loss-layer benchmark, with the defines and includes of the caffe tool
echo "$me: compiling bench/gpu/loss_layers_bench.cpp" >&2
bench/gpu/build_loss_bench.sh "$build" "$stage/bin/loss_layers_bench" \
  || die "compiling bench/gpu/loss_layers_bench.cpp failed"
missing=$(ldd "$stage/bin/loss_layers_bench" | awk '/not found/ {print $1}')
# shellcheck disable=SC2086
[ -z "$missing" ] || die "ldd finds no $(echo $missing) for loss_layers_bench"
carry=$(to_carry "$(deps "$stage"/bin/* "$libcaffe")")
while read -r name path; do
  [ -n "$name" ] || continue
  cp -L "$path" "$stage/lib/$name"
done <<< "$carry"

# 4. test data the tests open by relative path
mkdir -p "$stage/src/caffe/test" "$stage/examples/images"
cp -r "$build/src/src/caffe/test/test_data" "$stage/src/caffe/test/"
for f in cat.jpg fish-bike.jpg; do
  cp "$build/src/examples/images/$f" "$stage/examples/images/"
done

# 5. the lmdb benchmark net's data, written by jcdl's converter
py=$root/.venv/bin/python
[ -x "$py" ] || die "$py is missing: run make first (pycaffe and jcdl write" \
  "the benchmark's LMDB)"
"$py" bench/gpu/make_prototxts.py --lmdb "$stage/bench_lmdb" >&2 \
  || die "writing the benchmark's LMDB failed"
[ "$(basename "$out")" = gpu_pack ] || echo "$me: the lmdb benchmark net" \
  "reads gpu_pack/bench_lmdb; this pack is $out" >&2

# 6. the launcher
write_launcher "$stage/run"

# 7. what is in it, and its size
bytes=$(du -sb "$stage" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
{
  echo "packed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build=$build"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  for o in USE_CUDNN USE_NCCL USE_OPENCV USE_LMDB USE_LEVELDB BUILD_python BUILD_python_layer CUDA_ARCH_BIN CUDA_ARCH_PTX CMAKE_BUILD_TYPE; do
    echo "$o=$(opt $o)"
  done
  echo "nvcc=$("$cuda/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  if [ -f "$cuda/include/cudnn_version.h" ]; then
    echo "cudnn_headers=$(awk '/define CUDNN_(MAJOR|MINOR|PATCHLEVEL) /{printf "%s%s", sep, $3; sep="."}' "$cuda/include/cudnn_version.h")"
  fi
  echo "gtest=$([ -x "$stage/bin/test.testbin" ] && echo yes || echo no)"
  echo "libs=$(ls "$stage/lib" | tr '\n' ' ')"
  echo "bytes=$bytes"
} > "$stage/BUILD_INFO"

if awk -v b="$bytes" -v l="$limit_mib" 'BEGIN {exit !(b > l * 1048576)}'; then
  echo "$me: the pack would hold $mib MiB, over the ${limit_mib} MiB limit:" >&2
  (cd "$stage" && du -ab . | sort -rn | sed -n '2,12p') >&2
  exit 1
fi
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
echo "$me: $out holds $mib MiB (limit ${limit_mib} MiB): $(ls "$out/bin" | tr '\n' ' ')+ $(ls "$out/lib" | wc -l) libraries"
# the whole call carries the working tree too: say how much room is left
if tree=$(git ls-files -z -co --exclude-standard 2>/dev/null | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'); then
  total=$(awk -v a="$bytes" -v b="$tree" 'BEGIN {printf "%.1f", (a + b) / 1048576}')
  echo "$me: with the working tree ($(awk -v b="$tree" 'BEGIN {printf "%.1f", b / 1048576}') MiB) a run carrying $out sends $total MiB of 64"
  awk -v a="$bytes" -v b="$tree" 'BEGIN {exit !(a + b > 64 * 1048576)}' \
    && { echo "$me: that is over the 64 MiB a run may carry" >&2; exit 1; }
fi
exit 0
