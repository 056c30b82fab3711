#!/usr/bin/env bash
# Builds Caffe with the JCDL layers: fetches pristine upstream source (or takes
# CAFFE_SRC), checks it, applies caffe_KL/patches, overlays caffe_KL's own
# sources, configures with CMake and builds into build/<flavour>/.
#
# usage: caffe_KL/build.sh cpu|cuda [extra cmake --build targets...]
# env:   CAFFE_SRC=/path   use this BVLC Caffe tree instead of the download
#        CUDA_ARCH=90      GPU architecture(s) for the cuda flavour ("80 90")
#        USE_CUDNN=0|1     cuda flavour only (default 0, see README)
#        USE_NCCL=auto|0|1 cuda flavour only: NCCL for multi-GPU training
#                          (caffe train -gpu 0,1 / -gpu all); auto (default)
#                          builds with it when NCCL_DIR, the CUDA toolkit or
#                          /usr has nccl.h and libnccl.so, 1 requires it
#        JOBS=N            parallel compile jobs (default: all cores)
#        PYTHON=path       python whose numpy headers pycaffe is built against
#        BUILD_DIR=dir     build here instead of build/<flavour> (e.g. the GPU
#                          pack's build/cuda-pack, see bench/gpu/README.md)
#        CAFFE_CMAKE_ARGS  more CMake options ("-DUSE_OPENCV=OFF ...")
#        CONFIGURE_ONLY=1  stop after CMake's configure step (cmake.log)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
flavour=${1:-cpu}; shift || true
case $flavour in cpu|cuda) ;; *) echo "build.sh: flavour must be cpu or cuda, not '$flavour'" >&2; exit 2;; esac
case ${USE_NCCL:-auto} in auto|0|1) ;; *) echo "build.sh: USE_NCCL must be auto, 0 or 1, not '$USE_NCCL'" >&2; exit 2;; esac

case ${BUILD_DIR:-} in
  "") out=$root/build/$flavour ;;
  /*) out=$BUILD_DIR ;;
  *) out=$root/$BUILD_DIR ;;
esac
src=$out/src
bin=$out/build
jobs=${JOBS:-$(nproc)}
python=${PYTHON:-$root/.venv/bin/python}

# Debian's maintained source of BVLC Caffe (bullseye), pinned by its published SHA-256.
version=1.0.0+git20180821.99bd997
url=http://deb.debian.org/debian/pool/main/c/caffe/caffe_${version}.orig.tar.gz
sha256=e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c
cache=${XDG_CACHE_HOME:-$HOME/.cache}/jcdl
tarball=$cache/caffe_${version}.orig.tar.gz

log() { echo "[caffe_KL] $*" >&2; }

fetch() {
  [ -f "$tarball" ] && echo "$sha256  $tarball" | sha256sum -c --quiet - 2>/dev/null && return
  mkdir -p "$cache"
  log "downloading $url"
  curl -fsSL --retry 3 -o "$tarball.part" "$url"
  if ! echo "$sha256  $tarball.part" | sha256sum -c --quiet - ; then
    rm -f "$tarball.part"; log "checksum mismatch for $url"; exit 1
  fi
  mv "$tarball.part" "$tarball"
}

# 1. pristine source + patches, redone whenever the patches or the origin
#    change; only the files whose patched text changed are replaced, so a new
#    patch recompiles what it touches, not the whole tree
copy_changed() {  # copy_changed FROM TO: the files of FROM that differ in TO
  (cd "$1" && find . -type f) | while read -r f; do
    cmp -s "$1/$f" "$2/$f" || { mkdir -p "$(dirname "$2/$f")"; cp "$1/$f" "$2/$f"; }
  done
}
if [ -n "${CAFFE_SRC:-}" ] && [ ! -f "$CAFFE_SRC/CMakeLists.txt" ]; then
  log "CAFFE_SRC=$CAFFE_SRC is not a Caffe source tree (no CMakeLists.txt)"; exit 1
fi
# files an earlier run put into src that this one would not: the ones of
# patches since removed (below, as the patches are applied) and overlay
# files since removed from caffe_KL, taken away again (a stale test or
# layer would otherwise still be compiled); where upstream has such a
# file, patching again restores it
overlay_list=$(cd "$here" && find include src tools -type f | sort)
if [ -f "$out/.overlay-files" ]; then
  for f in $(comm -23 "$out/.overlay-files" - <<< "$overlay_list"); do
    rm -f "$src/$f"
    if grep -qxF "$f" "$out/.src-files" 2>/dev/null; then rm -f "$out/.src-stamp"; fi
  done
fi
origin=${CAFFE_SRC:-$sha256}
stamp=$( (echo "$origin"; cat "$here"/patches/*.patch) | sha256sum | cut -c1-16)
if [ "$(cat "$out/.src-stamp" 2>/dev/null)" != "$stamp" ]; then
  if [ "$(cat "$out/.origin" 2>/dev/null)" != "$origin" ]; then
    rm -rf "$src" "$out/.overlay-stamp"
  fi
  fresh=$out/src.new
  rm -rf "$fresh" "$out/.src-stamp"
  mkdir -p "$fresh" "$src"
  if [ -n "${CAFFE_SRC:-}" ]; then
    log "copying $CAFFE_SRC"
    (cd "$CAFFE_SRC" && tar cf - --exclude=.git --exclude=build .) | tar xf - -C "$fresh"
  else
    fetch
    tar xzf "$tarball" -C "$fresh"
  fi
  for p in "$here"/patches/*.patch; do
    log "patch $(basename "$p")"
    patch -s -p1 -d "$fresh" < "$p"
  done
  copy_changed "$fresh" "$src"
  (cd "$fresh" && find . -type f | sed 's|^\./||' | sort) > "$out/.src-files.new"
  if [ -f "$out/.src-files" ]; then
    for f in $(comm -23 "$out/.src-files" "$out/.src-files.new"); do
      grep -qxF "$f" <<< "$overlay_list" || rm -f "$src/$f"
    done
  fi
  mv "$out/.src-files.new" "$out/.src-files"
  rm -rf "$fresh"
  echo "$origin" > "$out/.origin"
  echo "$stamp" > "$out/.src-stamp"
fi

# 2. overlay our files; copy only what changed so rebuilds stay incremental
for f in $overlay_list; do
  if ! cmp -s "$here/$f" "$src/$f"; then
    mkdir -p "$(dirname "$src/$f")"; cp "$here/$f" "$src/$f"
  fi
done
echo "$overlay_list" > "$out/.overlay-files"

# 3. configure when new, or when the CMake options or the set of overlaid
#    files (CMake globs them) changed
args=(-DCMAKE_BUILD_TYPE=Release -DBLAS=Open -Dpython_version=3
      -DPYTHON_EXECUTABLE="$python" -DBUILD_docs=OFF -DBUILD_matlab=OFF
      -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
if [ "$flavour" = cpu ]; then
  args+=(-DCPU_ONLY=ON)
else
  arch=${CUDA_ARCH:-90}
  args+=(-DCPU_ONLY=OFF -DUSE_CUDNN=$([ "${USE_CUDNN:-0}" = 1 ] && echo ON || echo OFF)
         -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$arch" -DCUDA_ARCH_PTX="${arch##* }"
         -DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}")
  # NCCL: Caffe's multi-GPU data parallelism. Upstream's FindNCCL looks only
  # in /usr and /usr/local, not in the CUDA toolkit (where CUDA 13's pip
  # toolkit puts it), so name the header and the library, from one root.
  nccl_inc= nccl_lib=
  if [ "${USE_NCCL:-auto}" != 0 ]; then
    cuda_home=${CUDA_HOME:-/usr/local/cuda}
    for pair in ${NCCL_DIR:+"$NCCL_DIR/include:$NCCL_DIR/lib64" "$NCCL_DIR/include:$NCCL_DIR/lib"} \
                "$cuda_home/include:$cuda_home/lib64" "$cuda_home/include:$cuda_home/lib" \
                "/usr/include:/usr/lib/$(gcc -print-multiarch 2>/dev/null)" "/usr/include:/usr/lib64"; do
      if [ -f "${pair%%:*}/nccl.h" ] && [ -e "${pair#*:}/libnccl.so" ]; then
        nccl_inc=${pair%%:*} nccl_lib=${pair#*:}/libnccl.so; break
      fi
    done
  fi
  if [ -n "$nccl_inc" ]; then
    args+=(-DUSE_NCCL=ON -DNCCL_INCLUDE_DIR="$nccl_inc" -DNCCL_LIBRARIES="$nccl_lib")
  elif [ "${USE_NCCL:-auto}" = 1 ]; then
    log "USE_NCCL=1 but there is no nccl.h with libnccl.so in" \
        "${NCCL_DIR:+NCCL_DIR=$NCCL_DIR, }${CUDA_HOME:-/usr/local/cuda} or /usr: set NCCL_DIR"
    exit 1
  else
    args+=(-DUSE_NCCL=OFF)
  fi
  # CUDA 12.8+ makes __global__ template stubs static and hidden: the test
  # binary launches kernels defined in libcaffe (im2col), so keep them
  # visible. (grep without -q: with pipefail, -q's early exit fails the pipe)
  nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
  if "$nvcc" --help 2>/dev/null | grep static-global-template-stub >/dev/null; then
    args+=("-DCUDA_NVCC_FLAGS=-static-global-template-stub=false;-device-entity-has-hidden-visibility=false")
  fi
fi
# shellcheck disable=SC2206  # word-split on purpose: several options
args+=(${CAFFE_CMAKE_ARGS:-})
# pycaffe's _caffe.so is compiled against this numpy's headers: another
# numpy version reconfigures and rebuilds it
numpy_version=$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo none)
cfg_stamp=$(echo "$overlay_list ${args[*]} numpy=$numpy_version" | sha256sum | cut -c1-16)
if [ "$(cat "$out/.overlay-stamp" 2>/dev/null)" != "$cfg_stamp" ] || [ ! -f "$bin/Makefile" ]; then
  log "configuring $flavour build in $bin"
  mkdir -p "$bin"
  (cd "$bin" && cmake "${args[@]}" "$src" > "$out/cmake.log" 2>&1) \
    || { tail -30 "$out/cmake.log" >&2; log "cmake failed, full log: $out/cmake.log"; exit 1; }
  echo "$cfg_stamp" > "$out/.overlay-stamp"
fi
[ "${CONFIGURE_ONLY:-0}" = 1 ] && { log "configured $flavour build in $bin"; exit 0; }

# 4. build (ccache keys on paths relative to the project, so fresh clones reuse it)
export CCACHE_BASEDIR=$root
log "building $flavour ($jobs jobs)"
cmake --build "$bin" -j "$jobs" -- --no-print-directory "$@" || { log "build failed"; exit 1; }
