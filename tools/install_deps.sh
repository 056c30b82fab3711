#!/usr/bin/env bash
# Installs the Debian packages the build needs, when some are missing.
set -euo pipefail
pkgs=(build-essential cmake ccache curl ca-certificates patch pkg-config
      libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev
      libhdf5-dev liblmdb-dev libleveldb-dev libsnappy-dev libopencv-dev
      libboost-system-dev libboost-thread-dev libboost-filesystem-dev
      libboost-python-dev libopenblas-dev python3-dev python3-venv
      graphviz  # caffe.draw's images
      chromium chromium-driver)  # the last two: tests/test_serve.py's browser
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "[deps] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
