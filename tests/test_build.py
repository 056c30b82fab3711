"""caffe_KL/build.sh: patches, bad settings, and a rebuild that does
nothing when nothing changed."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

BUILD = ROOT / "caffe_KL" / "build.sh"
PATCHES = sorted((ROOT / "caffe_KL" / "patches").glob("*.patch"))
TARBALL = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "jcdl" / "caffe_1.0.0+git20180821.99bd997.orig.tar.gz"


def build(*args, env=None):
    return subprocess.run(["bash", str(BUILD), *args], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})),
                          timeout=600)


def test_each_patch_says_why_and_all_apply_to_pristine_source(tmp_path):
    assert len(PATCHES) >= 5
    for p in PATCHES:
        first = p.read_text().splitlines()[0]
        assert not first.startswith(("diff", "---")) and len(first) > 20, p
    # the tarball make fetched and checked by SHA-256
    subprocess.run(["tar", "xzf", str(TARBALL), "-C", str(tmp_path)],
                   check=True)
    for p in PATCHES:
        proc = subprocess.run(["patch", "-p1", "-d", str(tmp_path), "-i",
                               str(p)], capture_output=True, text=True)
        assert proc.returncode == 0, (p.name, proc.stdout, proc.stderr)
        assert "fuzz" not in proc.stdout and "offset" not in proc.stdout, p


def test_bad_settings_fail_clearly_and_touch_nothing(tmp_path):
    proc = build("cpu", env={"BUILD_DIR": str(tmp_path / "b"),
                             "CAFFE_SRC": str(tmp_path / "nope")})
    assert proc.returncode == 1
    assert "is not a Caffe source tree" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b").exists()
    proc = build("gpu")
    assert proc.returncode == 2 and "flavour must be cpu or cuda" in proc.stderr
    proc = build("cuda", env={"BUILD_DIR": str(tmp_path / "b"),
                              "USE_NCCL": "yes"})
    assert proc.returncode == 2, proc.stderr
    assert "USE_NCCL must be auto, 0 or 1, not 'yes'" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_nccl_required_but_missing_fails_before_configuring(tmp_path):
    """USE_NCCL=1 with no NCCL in CUDA_HOME (nor /usr) stops with a
    message instead of configuring a build without multi-GPU training."""
    if Path("/usr/include/nccl.h").exists():  # build.sh would find it
        pytest.skip("this machine has NCCL under /usr as well")
    nocuda = tmp_path / "nocuda"
    (nocuda / "include").mkdir(parents=True)
    (nocuda / "include" / "nccl.h").write_text("")  # a header, no library
    proc = build("cuda", env={"BUILD_DIR": str(tmp_path / "b"),
                              "USE_NCCL": "1", "CUDA_HOME": str(nocuda),
                              "CONFIGURE_ONLY": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "USE_NCCL=1 but there is no nccl.h with libnccl.so in" \
        in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "b" / "build").exists()


def test_rebuild_with_nothing_changed_does_nothing():
    proc = build("cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "configuring" not in out and "patch 0" not in out
    assert "Building CXX" not in out and "Linking" not in out


def test_files_of_removed_patches_and_overlays_leave_the_source_tree(
        tmp_path):
    """A patch or an overlay file taken out of caffe_KL is taken out of an
    existing build's source tree at the next build (a stale test or layer
    was still compiled): files it created are removed, upstream files it
    changed are restored."""
    import shutil
    kl = tmp_path / "caffe_KL"
    kl.mkdir()
    for part in ("build.sh", "patches", "include", "src", "tools"):
        (shutil.copy2 if part == "build.sh" else shutil.copytree)(
            ROOT / "caffe_KL" / part, kl / part)
    extra_overlay = kl / "src" / "caffe" / "test" / "test_stale_overlay.cpp"
    extra_overlay.write_text("// an overlay file, removed later\n")
    upstream = "src/caffe/util/benchmark.cpp"
    pristine = None
    extra_patch = kl / "patches" / "9999-stale.patch"
    extra_patch.write_text(
        "A patch removed later.\n"
        "diff -ruN a/src/caffe/stale_new.cpp b/src/caffe/stale_new.cpp\n"
        "--- a/src/caffe/stale_new.cpp\n+++ b/src/caffe/stale_new.cpp\n"
        "@@ -0,0 +1 @@\n+// made by a patch\n"
        f"diff -ru a/{upstream} b/{upstream}\n"
        f"--- a/{upstream}\n+++ b/{upstream}\n"
        "@@ -1,1 +1,2 @@\n+// changed by a patch\n #include <boost/date_time/posix_time/posix_time.hpp>\n")
    out = tmp_path / "b"
    env = {"BUILD_DIR": str(out), "CONFIGURE_ONLY": "1",
           "PYTHON": str(ROOT / ".venv" / "bin" / "python")}

    def run():
        proc = subprocess.run(["bash", str(kl / "build.sh"), "cpu"],
                              capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, **env))
        assert proc.returncode == 0, proc.stderr[-2000:]

    run()
    src = out / "src"
    assert (src / "src/caffe/test/test_stale_overlay.cpp").exists()
    assert (src / "src/caffe/stale_new.cpp").exists()
    assert (src / upstream).read_text().startswith("// changed by a patch")
    extra_overlay.unlink()
    extra_patch.unlink()
    run()
    assert not (src / "src/caffe/test/test_stale_overlay.cpp").exists()
    assert not (src / "src/caffe/stale_new.cpp").exists()
    assert not (src / upstream).read_text().startswith("// changed")
    # our own overlay and patches are all still there
    assert (src / "src/caffe/layers/softmax_kl_loss_layer.cpp").exists()
    assert "cpu_taps" in (src / "src/caffe/layers/base_conv_layer.cpp"
                          ).read_text()


def changed_sources():
    """Our C++/CUDA sources and the upstream ones our patches change,
    relative to the Caffe source root."""
    ours = [p.relative_to(ROOT / "caffe_KL").as_posix()
            for d in ("src", "tools")
            for p in (ROOT / "caffe_KL" / d).rglob("*")
            if p.suffix in (".cpp", ".cu")]
    patched = [line.split()[2][2:] for p in PATCHES
               for line in p.read_text().splitlines()
               if line.startswith("diff -ru ")]
    return sorted(set(ours) | {f for f in patched
                               if f.endswith((".cpp", ".cu"))})


def nccl_sources(src):
    """The sources that change when Caffe is built with NCCL (its multi-GPU
    training): those that test USE_NCCL, relative to the source root."""
    return sorted(p.relative_to(src).as_posix()
                  for p in src.rglob("*") if p.suffix in (".cpp", ".cu")
                  and "USE_NCCL" in p.read_text(errors="replace"))


def symbols(path, *nm_args):
    proc = subprocess.run(["nm", *nm_args, str(path)], capture_output=True,
                          text=True, check=True)
    return {line.split()[-1] for line in proc.stdout.splitlines()
            if line.strip()}


def nccl_calls(obj):
    """The symbols an object needs whose function name starts with nccl,
    C or C++ (a declaration NCCL's header does not make is mangled)."""
    raw = sorted(symbols(obj, "-u"))
    names = subprocess.run(["c++filt"], input="\n".join(raw), text=True,
                           capture_output=True, check=True).stdout.split("\n")
    return {r for r, n in zip(raw, names)
            if n.split("(")[0].split("::")[-1].startswith("nccl")}


def test_cuda_build_with_cudnn_9_and_nccl_configures_and_compiles_our_changes(
        tmp_path):
    """The CUDA flavour with USE_CUDNN=1 finds this machine's cuDNN 9 (its
    version macros moved to cudnn_version.h in cuDNN 8: patch 0007) and its
    NCCL (in the CUDA toolkit, where upstream's FindNCCL does not look), and
    every source we write or patch, and every one NCCL changes (multi-GPU
    training: parallel.cpp, the caffe tool, pycaffe, the solver tests),
    compiles there for sm_90 with the real build's rules (CUDA kernels,
    cuDNN layers, GPU tests); libnccl defines every NCCL function they call.
    CI never builds the whole CUDA flavour (about 20 minutes); the GPU issue
    does."""
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    assert (cuda / "bin" / "nvcc").is_file(), \
        f"the CUDA toolkit is part of the set-up: no {cuda}/bin/nvcc"
    out = tmp_path / "b"
    proc = build("cuda", env={"BUILD_DIR": str(out), "USE_CUDNN": "1",
                              "USE_NCCL": "1", "CONFIGURE_ONLY": "1"})
    log = (out / "cmake.log").read_text() if (out / "cmake.log").exists() \
        else ""
    assert proc.returncode == 0, proc.stderr[-2000:] + log[-2000:]
    assert "configured cuda build" in proc.stderr
    summary = {line[2:].split(":")[0].strip(): line.split(":", 1)[1].strip()
               for line in log.splitlines()
               if line.startswith("--   ") and ":" in line}
    assert summary["cuDNN"].startswith("Yes (ver. 9."), summary.get("cuDNN")
    assert summary["CPU_ONLY"] == "OFF"
    assert summary["USE_NCCL"] == "ON"
    bld = out / "build"
    cache = (bld / "CMakeCache.txt").read_text()
    assert "CUDA_ARCH_BIN:STRING=90" in cache
    assert "-static-global-template-stub=false" in cache
    assert not list(bld.rglob("libcaffe.so*"))  # configured, not built
    libnccl = Path(re.search(r"^NCCL_LIBRARIES:FILEPATH=(.+)$", cache,
                             re.M).group(1))
    assert libnccl.exists(), libnccl

    # each changed source's object, by the rule CMake wrote for it
    nccl = nccl_sources(out / "src")
    assert {"src/caffe/parallel.cpp", "tools/caffe.cpp",
            "python/caffe/_caffe.cpp"} <= set(nccl), nccl
    sources = {str(out / "src" / f): f for f in changed_sources() + nccl}
    objects = {}
    for mk in bld.rglob("build.make"):
        for line in mk.read_text().splitlines():
            m = re.match(r"^(\S+\.o): (\S+)$", line)
            if m and m.group(2) in sources:
                objects.setdefault(sources.pop(m.group(2)), (mk, m.group(1)))
    assert not sources, f"no rule compiles {sorted(sources.values())}"
    assert any(f.endswith(".cu") for f in objects)
    env = dict(os.environ, CCACHE_BASEDIR=str(out))
    make = ["make", "-j", str(os.cpu_count() or 2)]
    proto = subprocess.run(make + ["caffeproto"], cwd=bld, env=env,
                           capture_output=True, text=True, timeout=600)
    assert proto.returncode == 0, proto.stdout[-2000:] + proto.stderr[-2000:]
    by_makefile = {}
    for mk, obj in objects.values():
        by_makefile.setdefault(mk, []).append(obj)
    for mk, objs in by_makefile.items():
        proc = subprocess.run(make + ["-f", str(mk.relative_to(bld))] + objs,
                              cwd=bld, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for f, (mk, obj) in objects.items():
        assert (bld / obj).is_file(), f

    # compiled with NCCL on, and linkable against this NCCL
    called = set()
    for f in nccl:
        called |= nccl_calls(bld / objects[f][1])
    assert {"ncclCommInitAll", "ncclBcast", "ncclAllReduce"} <= called, called
    missing = called - symbols(libnccl, "-D", "--defined-only")
    assert not missing, f"{libnccl} does not define {sorted(missing)}"
