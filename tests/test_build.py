"""caffe_KL/build.sh: patches, bad settings, and a rebuild that does
nothing when nothing changed."""
import os
import subprocess
from pathlib import Path

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


def test_rebuild_with_nothing_changed_does_nothing():
    proc = build("cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "configuring" not in out and "patch 0" not in out
    assert "Building CXX" not in out and "Linking" not in out
