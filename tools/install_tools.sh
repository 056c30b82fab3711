#!/usr/bin/env bash
# Puts Caffe's tools into the venv's bin/ as small scripts (not symlinks) that
# choose the OpenBLAS kernel first, and installs tools/jcdl_blas.py with a
# .pth so the venv's Python chooses it at start-up (see jcdl_blas.py: Debian
# 12's OpenBLAS runs its slowest kernel on CPUs newer than itself).
#
# usage: tools/install_tools.sh VENV TOOLS_DIR SITE_PACKAGES TOOL...
set -euo pipefail
venv=$(cd "$1" && pwd); bindir=$2; site=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)

cp "$here/jcdl_blas.py" "$site/jcdl_blas.py.new" && mv "$site/jcdl_blas.py.new" "$site/jcdl_blas.py"
# a .pth line that starts with "import" is run by site.py at every start
echo "import jcdl_blas; jcdl_blas.apply()" > "$site/jcdl_blas.pth"

for t in "$@"; do
  out=$venv/bin/$t
  cat > "$out.new" <<SH
#!/bin/bash
# made by make install (tools/install_tools.sh): $bindir/$t
# on the OpenBLAS kernel that fits this CPU (jcdl_blas.py; an
# OPENBLAS_CORETYPE you set is kept unless this CPU cannot run it)
core=\$('$venv/bin/python' -I -S '$site/jcdl_blas.py' --kernel) || core=
case \$core in
  '') ;;
  -) unset OPENBLAS_CORETYPE JCDL_OPENBLAS_CORETYPE ;;
  *) export OPENBLAS_CORETYPE=\$core JCDL_OPENBLAS_CORETYPE=\$core ;;
esac
exec -a "\$0" '$bindir/$t' "\$@"
SH
  chmod 755 "$out.new"
  rm -f "$out"   # a symlink from an earlier install
  mv "$out.new" "$out"
done
