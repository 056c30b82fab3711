"""The OpenBLAS kernel Caffe runs on (tools/jcdl_blas.py, make install).

Every entry point is checked from inside the process that runs Caffe: a
small library preloaded into it (LD_PRELOAD) calls the loaded OpenBLAS's
openblas_get_corename() when the process exits and prints it with the
process's executable; the Python entry point also asks through ctypes.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, ROOT

sys.path.insert(0, str(ROOT / "tools"))
import jcdl_blas  # noqa: E402

REPORTER_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* the library Caffe links, if this process loaded it (RTLD_NOLOAD); numpy's
   own OpenBLAS is another file with prefixed names */
__attribute__((destructor)) static void report(void) {
  void *lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_NOLOAD);
  char *(*core)(void) = lib ? (char *(*)(void))dlsym(lib, "openblas_get_corename") : 0;
  char exe[4096] = "";
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) exe[n] = 0;
  if (core) fprintf(stderr, "\nJCDL-OPENBLAS-CORE %s %s\n", exe, core());
}
"""

CAFFE_TOOLS = ["caffe", "convert_imageset_r", "compute_image_mean",
               "convert_imageset", "extract_features", "upgrade_net_proto_text",
               "upgrade_net_proto_binary", "upgrade_solver_proto_text"]


@pytest.fixture(scope="module")
def reporter(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the reporter library")
    d = tmp_path_factory.mktemp("reporter")
    (d / "r.c").write_text(REPORTER_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(d / "r.so"),
                    str(d / "r.c"), "-ldl"], check=True)
    return d / "r.so"


def cores_of(cmd, reporter, env_extra=None, drop_user=True, cwd=None):
    """{executable: core} of every process of cmd that loaded OpenBLAS."""
    env = dict(os.environ)
    if drop_user:
        env.pop(jcdl_blas.ENV, None)
    env.update(env_extra or {})
    env["LD_PRELOAD"] = str(reporter)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       timeout=300, cwd=cwd)
    found = {}
    for line in p.stderr.splitlines() + p.stdout.splitlines():
        if line.startswith("JCDL-OPENBLAS-CORE "):
            _, exe, core = line.split(" ", 2)
            found[os.path.basename(exe)] = core
    return p, found


def expected_core():
    """OpenBLAS's own choice in a clean environment, unless that is its
    fallback and the CPU can run better (then jcdl_blas's choice)."""
    own = jcdl_blas.probe()
    assert own is not None, "cannot load libopenblas.so.0"
    override = jcdl_blas.choose(own[0], jcdl_blas.cpu_info()[1])
    return override or own[0]


def other_core():
    """A kernel this CPU runs that OpenBLAS would not pick by itself."""
    flags = jcdl_blas.cpu_info()[1]
    own = jcdl_blas.probe()[0]
    for core, needs in jcdl_blas.LADDER:
        if core != own and all(n in flags for n in needs):
            return core
    pytest.skip("this CPU runs no other kernel of the ladder")


# --- the rule ---------------------------------------------------------------

SKX = {"sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f",
       "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def test_a_fallback_is_replaced_by_the_best_kernel_the_flags_allow():
    assert jcdl_blas.choose("Prescott", SKX) == "SkylakeX"
    assert jcdl_blas.choose("Prescott", SKX - {"avx512bw"}) == "Haswell"
    assert jcdl_blas.choose("Prescott", {"sse2", "avx"}) == "Sandybridge"


def test_never_a_kernel_the_cpu_cannot_run():
    assert jcdl_blas.choose("Prescott", {"sse2", "sse3"}) is None
    for flags in (SKX, SKX - {"avx512vl"}, {"avx", "avx2"}, {"avx"}, set()):
        core = jcdl_blas.best_for_flags(flags)
        needs = dict(jcdl_blas.LADDER).get(core, ())
        assert all(n in flags for n in needs)
    assert jcdl_blas.best_for_flags({"avx", "avx2"}) == "Sandybridge"  # no fma


def test_openblas_own_choice_is_kept_when_it_is_not_the_fallback():
    for own in ("Haswell", "SkylakeX", "Zen", "Cooperlake", "SapphireRapids"):
        assert jcdl_blas.choose(own, SKX) is None
    assert jcdl_blas.choose(None, SKX) is None


AVX2 = {"sse2", "pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma"}


def test_a_user_kernel_the_cpu_cannot_run_is_replaced():
    assert jcdl_blas.inherited("SkylakeX", AVX2) == (
        "Haswell", ("avx512f", "avx512cd", "avx512bw", "avx512dq",
                    "avx512vl"))
    assert jcdl_blas.inherited("cooperlake", SKX) == (
        "SkylakeX", ("avx512_bf16",))
    assert jcdl_blas.inherited("HASWELL", {"sse2", "avx"})[0] == "Sandybridge"
    # FMA4 on a CPU without it: OpenBLAS's Piledriver kernel dies of SIGILL
    assert jcdl_blas.inherited("Piledriver", AVX2) == ("Haswell",
                                                       ("fma4", "xop"))
    assert jcdl_blas.inherited("SapphireRapids", SKX)[0] == "SkylakeX"
    # one it can run, one OpenBLAS does not know, an empty one: kept
    for value in ("Haswell", "Zen", "Prescott", "Core2", "Bogus", ""):
        assert jcdl_blas.inherited(value, AVX2) == (None, ()), value


def fake_cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: Test\nflags\t\t: " +
                    " ".join(sorted(flags)) + "\n\n")
    return str(path)


def test_apply_replaces_an_unrunnable_setting_and_says_so(
        tmp_path, monkeypatch, capsys):
    info = fake_cpuinfo(tmp_path, AVX2)
    monkeypatch.delenv(jcdl_blas.MARK, raising=False)
    monkeypatch.setenv(jcdl_blas.ENV, "SkylakeX")
    jcdl_blas.apply(info)
    assert os.environ[jcdl_blas.ENV] == os.environ[jcdl_blas.MARK] == "Haswell"
    err = capsys.readouterr().err
    assert err == ("jcdl: OPENBLAS_CORETYPE=SkylakeX needs avx512f, "
                   "avx512cd, avx512bw, avx512dq, avx512vl, which this CPU "
                   "lacks; using Haswell instead\n")
    # a setting it can run is kept, quietly
    monkeypatch.setenv(jcdl_blas.ENV, "Sandybridge")
    monkeypatch.delenv(jcdl_blas.MARK)
    jcdl_blas.apply(info)
    assert os.environ[jcdl_blas.ENV] == "Sandybridge"
    assert jcdl_blas.MARK not in os.environ and capsys.readouterr().err == ""
    # nothing fits: unset, so that OpenBLAS chooses
    monkeypatch.setenv(jcdl_blas.ENV, "Haswell")
    jcdl_blas.apply(fake_cpuinfo(tmp_path, {"sse2"}))
    assert jcdl_blas.ENV not in os.environ
    assert "using OpenBLAS's own choice instead" in capsys.readouterr().err
    # no flags to go by (no /proc): a user's setting stays
    monkeypatch.setenv(jcdl_blas.ENV, "Haswell")
    jcdl_blas.apply(str(tmp_path / "none"))
    assert os.environ[jcdl_blas.ENV] == "Haswell"
    assert capsys.readouterr().err == ""


def test_the_wrappers_are_told_to_unset_or_keep(tmp_path, monkeypatch,
                                                capsys):
    """kernel(): "" (the wrappers' "-") unsets a setting nothing fits;
    None keeps; jcdl's own, inherited by a process on a CPU that cannot
    run it, is replaced without a word; applying twice changes nothing."""
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    monkeypatch.setenv(jcdl_blas.ENV, "Haswell")
    monkeypatch.delenv(jcdl_blas.MARK, raising=False)
    assert jcdl_blas.kernel(cpuinfo=fake_cpuinfo(tmp_path, {"sse2"})) == ""
    assert jcdl_blas.kernel(cpuinfo=fake_cpuinfo(tmp_path, AVX2)) is None
    monkeypatch.setenv(jcdl_blas.ENV, "SkylakeX")
    monkeypatch.setenv(jcdl_blas.MARK, "SkylakeX")
    info = fake_cpuinfo(tmp_path, AVX2)
    assert jcdl_blas.kernel(warn, info) == "Haswell"
    assert capsys.readouterr().err == ""
    for _ in range(2):
        jcdl_blas.apply(info)
        assert os.environ[jcdl_blas.ENV] == "Haswell"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a bind mount over /proc/cpuinfo needs root")
@pytest.mark.parametrize("flags, want", [
    (AVX2, "Haswell"),   # replaced by the best that fits
    ({"sse2"}, None)])   # nothing fits: unset, OpenBLAS's own choice
def test_entry_points_replace_an_unrunnable_setting(reporter, tmp_path, flags,
                                                    want):
    """The caffe tool's wrapper and the Python hook alike, on a CPU that
    says it has only these flags (a fake /proc/cpuinfo bound over the real
    one in a mount namespace of their own)."""
    info = fake_cpuinfo(tmp_path, flags)
    want = want or jcdl_blas.probe()[0]
    for cmd in ([str(BIN / "caffe"), "--version"],
                [str(BIN / "python"), "-c", "import caffe"]):
        p, cores = cores_of(
            ["unshare", "-m", "sh", "-c",
             'mount --bind "$0" /proc/cpuinfo && exec "$@"', info, *cmd],
            reporter, {jcdl_blas.ENV: "SkylakeX"})
        assert p.returncode == 0, p.stderr
        assert set(cores.values()) == {want}, (cmd, cores, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.startswith("jcdl:")]
        assert len(lines) == 1 and "OPENBLAS_CORETYPE=SkylakeX needs " \
            "avx512f" in lines[0], p.stderr


def test_report_tells_jcdls_setting_from_the_users():
    def report(env):
        env = {**{k: v for k, v in os.environ.items()
                  if k not in (jcdl_blas.ENV, jcdl_blas.MARK)}, **env}
        p = subprocess.run([str(BIN / "python"), "-S",
                            str(ROOT / "tools" / "jcdl_blas.py")], env=env,
                           capture_output=True, text=True, check=True)
        return json.loads(p.stdout)
    core = other_core()
    assert report({jcdl_blas.ENV: core})["user_setting"] == core
    mine = report({jcdl_blas.ENV: core, jcdl_blas.MARK: core})
    assert mine["user_setting"] is None
    assert mine["override"] == jcdl_blas.choose(mine["own_choice"],
                                                jcdl_blas.cpu_info()[1])


def test_the_cache_is_used_and_keyed_by_cpu_and_library(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sig = jcdl_blas.cpu_info()[0]
    own = jcdl_blas.own_choice(sig=sig)
    assert own == jcdl_blas.probe()[0]
    path = Path(jcdl_blas.cache_path(sig))
    lines = path.read_text().split("\n")
    assert lines[1] == own
    # a valid entry is believed without loading the library...
    lines[1] = "Bogus"
    path.write_text("\n".join(lines))
    assert jcdl_blas.own_choice(sig=sig) == "Bogus"
    # ...but not for another CPU, nor once the library file changed
    assert jcdl_blas.own_choice(sig=sig + " other") == own
    lines = path.read_text().split("\n")
    lines[1], lines[3] = "Bogus", "1 2 3"
    path.write_text("\n".join(lines))
    assert jcdl_blas.own_choice(sig=sig) == own


def test_processes_with_another_library_path_keep_their_own_entry(
        tmp_path, monkeypatch):
    """Starts with different LD_LIBRARY_PATHs (a test, a tool wrapper)
    each keep their entry instead of replacing one another's, which made
    every other start probe a child process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sig = jcdl_blas.cpu_info()[0]
    paths = {}
    for ld in ("", str(tmp_path / "elsewhere")):
        monkeypatch.setenv("LD_LIBRARY_PATH", ld)
        jcdl_blas.own_choice(sig=sig)
        paths[ld] = Path(jcdl_blas.cache_path(sig))
        lines = paths[ld].read_text().split("\n")
        lines[1] = f"Bogus{len(paths)}"  # believed only if not probed again
        paths[ld].write_text("\n".join(lines))
    assert len(set(paths.values())) == 2
    for i, ld in enumerate(paths, 1):
        monkeypatch.setenv("LD_LIBRARY_PATH", ld)
        assert jcdl_blas.own_choice(sig=sig) == f"Bogus{i}"


# --- the entry points -------------------------------------------------------

def test_caffe_tools_in_the_venv_choose_the_kernel_first():
    for t in CAFFE_TOOLS:
        tool = BIN / t
        assert tool.is_file() and not tool.is_symlink(), tool
        text = tool.read_text()
        assert "jcdl_blas.py' --kernel" in text and "exec -a" in text, tool


def test_caffe_tool_runs_on_the_chosen_kernel(reporter):
    p, cores = cores_of([str(BIN / "caffe"), "--version"], reporter)
    assert p.returncode == 0, p.stderr
    assert cores.get("caffe") == expected_core(), p.stderr


def test_pycaffe_runs_on_the_chosen_kernel(reporter):
    code = ("import ctypes, caffe\n"
            "f = ctypes.CDLL('libopenblas.so.0').openblas_get_corename\n"
            "f.restype = ctypes.c_char_p\n"
            "print('CTYPES', f().decode())\n")
    p, cores = cores_of([str(BIN / "python"), "-c", code], reporter)
    assert p.returncode == 0, p.stderr
    want = expected_core()
    assert f"CTYPES {want}" in p.stdout.splitlines(), p.stdout
    assert set(cores.values()) == {want}, cores


def test_jcdl_subprocess_runs_on_the_chosen_kernel(reporter, tmp_path):
    p, cores = cores_of([str(BIN / "jcdl"), "netgen", "--out", str(tmp_path / "n"),
                         "--arch", "small", "--classes", "3",
                         "--train-db", "t", "--test-db", "v", "--test-iter", "1"], reporter)
    assert p.returncode == 0, p.stderr
    assert cores and set(cores.values()) == {expected_core()}, (cores, p.stderr)


def test_a_user_coretype_is_respected_everywhere(reporter, tmp_path):
    mine = other_core()
    env = {jcdl_blas.ENV: mine}
    p, cores = cores_of([str(BIN / "caffe"), "--version"], reporter, env)
    assert cores.get("caffe") == mine, p.stderr
    p, cores = cores_of([str(BIN / "python"), "-c", "import caffe"],
                        reporter, env)
    assert set(cores.values()) == {mine}, p.stderr
    p, cores = cores_of([str(BIN / "jcdl"), "netgen", "--out", str(tmp_path / "n"),
                         "--arch", "small", "--classes", "3",
                         "--train-db", "t", "--test-db", "v", "--test-iter", "1"], reporter, env)
    assert cores and set(cores.values()) == {mine}, p.stderr


def test_the_override_kernel_is_one_this_openblas_loads(reporter):
    """What jcdl_blas would set if OpenBLAS fell back here is a kernel this
    OpenBLAS has and this CPU runs (the caffe tool reports it)."""
    k = jcdl_blas.choose("Prescott", jcdl_blas.cpu_info()[1])
    if k is None:
        pytest.skip("this CPU runs nothing better than the fallback")
    p, cores = cores_of([str(BIN / "caffe"), "--version"], reporter,
                        {jcdl_blas.ENV: k})
    assert p.returncode == 0 and cores.get("caffe") == k, p.stderr


def test_installed_copy_is_the_tools_one():
    site = subprocess.run([str(BIN / "python"), "-c",
                           "import jcdl_blas; print(jcdl_blas.__file__)"],
                          capture_output=True, text=True, check=True)
    installed = Path(site.stdout.strip())
    assert installed.read_bytes() == (ROOT / "tools" / "jcdl_blas.py").read_bytes(), \
        "run make install"
    pth = installed.with_suffix(".pth")
    assert pth.read_text().strip() == "import jcdl_blas; jcdl_blas.apply()"


def test_train_vgg_gs_uses_the_venv_caffe_on_the_cpu():
    text = (ROOT / "prototxt" / "train_vgg_gs.sh").read_text()
    assert "../.venv/bin/caffe" in text
