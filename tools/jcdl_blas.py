"""The OpenBLAS kernel Caffe runs on, chosen before libopenblas loads.

OpenBLAS built with DYNAMIC_ARCH (Debian's is) picks its kernel when the
library loads, from the CPU's family and model. A CPU newer than the library
is not in its tables, and it falls back to its oldest x86-64 kernel,
"Prescott" (SSE3): Debian 12's OpenBLAS 0.3.21 does this on family 6
model 207, where its sgemm runs at about a seventh of the right kernel's
speed. The library reads OPENBLAS_CORETYPE in that same constructor, so the
choice has to be in the environment before the library is loaded.

The rule (``choose``, ``inherited``):
- a user's own OPENBLAS_CORETYPE (set, even empty) is kept, unless it names
  a kernel of ``NEEDS`` whose instruction sets the CPU lacks (OpenBLAS
  would die of an illegal instruction): then the best that fits replaces
  it, with a line on stderr saying so;
- OpenBLAS's own choice is kept unless it is the fallback (``FALLBACKS``);
- then the best kernel whose instruction sets are all in the CPU's flags
  (/proc/cpuinfo, where Linux lists only what it has enabled), so never a
  kernel the CPU cannot run; none (the fallback stays) when none fits.

OpenBLAS's own choice is read by loading the library in a child process
with OPENBLAS_CORETYPE unset (``probe``, about 30 ms) and cached per CPU
and library in ~/.cache/jcdl/openblas-core-CRC, so a start costs a read
of /proc/cpuinfo and of that file (under a millisecond).

Where it applies (make install): jcdl_blas.pth in .venv's site-packages runs
``apply()`` when .venv/bin/python starts (pycaffe, jcdl, a notebook on that
kernel, and what they start, since it is in the environment); the Caffe
tools in .venv/bin are small scripts that run ``python -I -S jcdl_blas.py
--kernel`` and exec the binary. Only the standard library is used, so both
work without site-packages.

    python jcdl_blas.py            what it sees and decides, as JSON
    python jcdl_blas.py --kernel   the value to set, "-" to unset it, or
                                   nothing (keep what is there)
"""
import os
import sys

ENV = "OPENBLAS_CORETYPE"
LIB = "libopenblas.so.0"  # the name libcaffe is linked with
# what DYNAMIC_ARCH loads for a CPU it does not know (driver/others/dynamic.c)
FALLBACKS = ("prescott",)
# best first: an OpenBLAS core name and the cpuinfo flags its kernels use.
# Cooperlake's sgemm is SkylakeX's (it adds bf16 routines Caffe never
# calls; measured equal here), so AVX-512 gets SkylakeX.
LADDER = (
    ("SkylakeX", ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
                  "avx2", "fma")),
    ("Haswell", ("avx2", "fma", "avx")),
    ("Sandybridge", ("avx",)),
    ("Nehalem", ("sse4_2", "sse4_1", "ssse3")),
)
# the instruction sets of the kernels a user may name, lower case: the
# ladder's, and other x86-64 kernels of OpenBLAS 0.3.21 (Zen runs Haswell's
# code; Cooperlake and SapphireRapids SkylakeX's and more; the AMD
# Bulldozer family's use FMA4, Barcelona's and Bobcat's SSE4a). A name not
# here (an unknown one is OpenBLAS's own choice for it) is left to OpenBLAS.
NEEDS = dict((core.lower(), needs) for core, needs in LADDER)
NEEDS.update(
    zen=NEEDS["haswell"],
    cooperlake=NEEDS["skylakex"] + ("avx512_bf16",),
    sapphirerapids=NEEDS["skylakex"] + ("avx512_bf16", "avx512_fp16"),
    bulldozer=("avx", "fma4", "xop"), piledriver=("avx", "fma4", "xop"),
    steamroller=("avx", "fma4", "xop"), excavator=("avx", "fma4", "xop"),
    barcelona=("pni", "sse4a"), bobcat=("ssse3", "sse4a"),
    penryn=("sse4_1",), dunnington=("sse4_1",), core2=("ssse3",),
    atom=("ssse3",), prescott=("pni",))  # SSE3 is "pni" in /proc/cpuinfo
# set beside OPENBLAS_CORETYPE when jcdl set it, so that what the processes
# it starts inherit is not taken for a setting of the user's
MARK = "JCDL_OPENBLAS_CORETYPE"
CACHE_VERSION = 1


def cpu_info(path="/proc/cpuinfo"):
    """(signature, flags) of the first CPU listed: the signature names it
    (vendor, family, model, stepping, flags) for the cache; flags is a set.
    Empty on a system without /proc/cpuinfo."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return "", set()
    flags = fields.get("flags", "")
    sig = "|".join(fields.get(k, "") for k in (
        "vendor_id", "cpu family", "model", "stepping")) + "|" + flags
    return sig, set(flags.split())


def best_for_flags(flags):
    """The best kernel of LADDER that the CPU can run, or None."""
    for core, needs in LADDER:
        if all(n in flags for n in needs):
            return core
    return None


def choose(own, flags):
    """The kernel to set, given OpenBLAS's own choice: None to keep it."""
    if not own or own.lower() not in FALLBACKS:
        return None
    best = best_for_flags(flags)
    if best is None or best.lower() == own.lower():
        return None
    return best


def inherited(value, flags):
    """(kernel to set instead, the flags it lacks) for an OPENBLAS_CORETYPE
    found in the environment: (None, ()) to keep it."""
    needs = NEEDS.get(value.strip().lower())
    missing = tuple(n for n in needs or () if n not in flags)
    if not missing:
        return None, ()
    return best_for_flags(flags), missing


def users_setting():
    """The OPENBLAS_CORETYPE of the environment unless jcdl set it."""
    value = os.environ.get(ENV)
    if value is not None and value == os.environ.get(MARK):
        return None
    return value


_PROBE = r"""
import ctypes, os, sys
lib = ctypes.CDLL(sys.argv[1])
f = lib.openblas_get_corename
f.restype = ctypes.c_char_p
path = ""
with open("/proc/self/maps") as maps:
    for line in maps:
        p = line.split()[-1]
        if "openblas" in os.path.basename(p) and p.startswith("/"):
            path = p
            break
print(f().decode())
print(path)
"""


def probe(lib=LIB, python=None):
    """(core, library path) that OpenBLAS picks by itself: loads it in a
    child with OPENBLAS_CORETYPE unset and one thread. None on failure."""
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV, "OPENBLAS_VERBOSE")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    import subprocess  # here: the start-up path only reads the cache
    try:
        r = subprocess.run([python or sys.executable, "-I", "-S", "-c",
                            _PROBE, lib], env=env, capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) < 2 or not lines[0]:
        return None
    return lines[0], lines[1]


def _stat(path):
    try:
        st = os.stat(path)
        return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return "-"


def cache_path(sig, lib=LIB):
    """The cache file for this CPU and library: one per key (its CRC in the
    name, the whole key on its first line), so that processes started with
    different LD_LIBRARY_PATHs do not take turns replacing one entry."""
    import zlib  # built in: costs nothing at start-up
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative one is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    crc = zlib.crc32(_key(sig, lib).encode("utf-8", "surrogateescape"))
    return os.path.join(base, "jcdl", f"openblas-core-{crc:08x}")


def _key(sig, lib):
    # what that CPU is and what decides which file the loader opens
    return "\t".join((str(CACHE_VERSION), sig, lib,
                      os.environ.get("LD_LIBRARY_PATH", ""),
                      _stat("/etc/ld.so.cache"))).replace("\n", " ")


def own_choice(lib=LIB, sig=None, use_cache=True):
    """OpenBLAS's own kernel on this CPU (cached), or None if unknown."""
    if sig is None:
        sig = cpu_info()[0]
    key = _key(sig, lib)
    path = cache_path(sig, lib)
    if use_cache:  # four lines: key, core, library path, its stat
        try:
            with open(path) as f:
                lines = f.read().split("\n")
            if (len(lines) >= 4 and lines[0] == key and lines[1]
                    and _stat(lines[2]) == lines[3]):
                return lines[1]
        except (OSError, ValueError):  # UnicodeDecodeError is one
            pass
    found = probe(lib)
    if found is None:
        return None
    core, libpath = found
    try:  # best effort: a read-only home just probes every time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join((key, core, libpath, _stat(libpath))) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return core


def kernel(warn=None, cpuinfo="/proc/cpuinfo"):
    """The OPENBLAS_CORETYPE to set now; "" to unset it (one this CPU
    cannot run, where nothing else fits either); None to keep what is
    there. warn(line) is told why a user's setting goes. Site runs the
    venv's .pth twice at each start: a second call changes nothing."""
    sig, flags = cpu_info(cpuinfo)
    if not flags:
        return None  # nothing known of the CPU: nothing changed
    if ENV in os.environ:  # a user's, or jcdl's own from a parent process
        value = os.environ[ENV]  # (kept alike, so that this is idempotent)
        best, missing = inherited(value, flags)
        if missing and warn and users_setting() is not None:
            instead = best or "OpenBLAS's own choice"
            warn(f"jcdl: OPENBLAS_CORETYPE={value} needs {', '.join(missing)}"
                 f", which this CPU lacks; using {instead} instead")
        return (best or "") if missing else None
    best = best_for_flags(flags)
    if best is None:
        return None  # no better kernel to offer: no need to probe
    return choose(own_choice(sig=sig), flags)


def apply(cpuinfo="/proc/cpuinfo"):
    """Sets OPENBLAS_CORETYPE in this process's environment when OpenBLAS's
    own choice would be its fallback, or a user's names a kernel this CPU
    cannot run. Never raises (it runs at start-up)."""
    try:
        k = kernel(lambda line: print(line, file=sys.stderr), cpuinfo)
        if k:
            os.environ[ENV] = os.environ[MARK] = k
        elif k == "":  # nothing fits: OpenBLAS's own choice
            os.environ.pop(ENV, None)
            os.environ.pop(MARK, None)
    except Exception:  # a start-up hook must not stop Python
        pass


def report():
    sig, flags = cpu_info()
    own = own_choice(sig=sig)
    user = users_setting()
    return {"user_setting": user, "own_choice": own,
            "best_for_flags": best_for_flags(flags),
            "override": (choose(own, flags) if user is None else
                         inherited(user, flags)[0]),
            "cache": cache_path(sig)}


if __name__ == "__main__":
    if sys.argv[1:] == ["--kernel"]:  # the wrappers': "-" is to unset it
        k = kernel(warn=lambda line: print(line, file=sys.stderr))
        print("-" if k == "" else k or "")
    elif sys.argv[1:]:
        sys.exit("usage: jcdl_blas.py [--kernel]")
    else:
        import json
        print(json.dumps(report(), indent=2))
