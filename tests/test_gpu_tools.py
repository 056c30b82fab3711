"""The GPU benchmark's CPU-side pieces (issue: GPU): the committed bench
prototxts are what bench/gpu/make_prototxts.py writes and build on the CPU,
the scripts parse, pack_gpu.sh refuses what it cannot pack, and
run_h200.sh turns (stub) tool outputs into its result files."""
import importlib.util
import json
import os
import py_compile
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import ROOT
from jcdl.caffenet import import_caffe

caffe = import_caffe()
pb = caffe.proto.caffe_pb2
BENCH = ROOT / "bench" / "gpu"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load("make_prototxts")
summarize = load("summarize_h200")


def test_committed_prototxts_are_what_the_generator_writes():
    files = gen.render()
    assert len(files) == 6
    for name, text in files.items():
        path = BENCH / name
        assert path.is_file(), f"{path} missing: run {gen.__file__}"
        assert path.read_text() == text, \
            f"{path} is stale: run .venv/bin/python bench/gpu/make_prototxts.py"


def parse_net(path):
    return text_format.Parse(Path(path).read_text(), pb.NetParameter())


@pytest.mark.parametrize("engine", ["default", "caffe"])
def test_bench_net_is_the_jcdl_vgg16_over_constant_data(engine):
    net = parse_net(BENCH / gen.net_name(engine))
    types = [l.type for l in net.layer]
    assert types[0] == "DummyData" and "Data" not in types
    assert types.count("Convolution") == 13
    assert types.count("InnerProduct") == 3
    assert "Accuracy" not in types
    dummy = net.layer[0].dummy_data_param
    assert [list(s.dim) for s in dummy.shape] == [
        [gen.BATCH, 3, gen.CROP, gen.CROP], [gen.BATCH, gen.CLASSES]]
    # constant fillers: DummyData fills once instead of every pass
    assert [f.type for f in dummy.data_filler] == ["constant", "constant"]
    assert dummy.data_filler[1].value == pytest.approx(1 / gen.CLASSES)
    losses = {l.type: l for l in net.layer if "Loss" in l.type}
    assert set(losses) == {"SoftmaxWithKLLoss", "SoftmaxWithDominantLoss"}
    assert losses["SoftmaxWithKLLoss"].loss_weight == [pytest.approx(0.8)]
    assert losses["SoftmaxWithDominantLoss"].loss_weight == [
        pytest.approx(0.2)]
    fc8 = next(l for l in net.layer if l.name == "my_fc8")
    assert fc8.inner_product_param.num_output == gen.CLASSES
    for l in net.layer:
        param = {"Convolution": "convolution_param", "Pooling":
                 "pooling_param", "ReLU": "relu_param"}.get(l.type)
        if param:
            expected = 1 if engine == "caffe" else 0  # CAFFE / DEFAULT
            assert getattr(l, param).engine == expected, l.name


@pytest.mark.parametrize("engine", gen.NETS)
def test_bench_solver_runs_the_recipe_on_its_net(engine):
    s = text_format.Parse((BENCH / gen.solver_name(engine)).read_text(),
                          pb.SolverParameter())
    assert s.net == f"bench/gpu/{gen.net_name(engine)}"
    assert (ROOT / s.net).is_file()
    assert (s.base_lr, s.momentum, s.weight_decay) == (
        pytest.approx(1e-4), pytest.approx(0.9), pytest.approx(0.005))
    assert s.solver_mode == pb.SolverParameter.GPU
    assert s.snapshot == 0 and not s.snapshot_after_train
    # run_h200.sh times the display intervals after the warm-up
    assert s.display == gen.DISPLAY
    assert s.max_iter >= summarize.WARMUP_ITERS + 3 * s.display


def small_bench_net(tmp_path):
    """The committed default net, shrunk to batch 2 of 32 x 32 images."""
    net = parse_net(BENCH / gen.net_name("default"))
    dummy = net.layer[0].dummy_data_param
    dummy.shape[0].dim[:] = [2, 3, 32, 32]
    dummy.shape[1].dim[0] = 2
    path = tmp_path / "small.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path


def test_bench_net_builds_on_the_cpu_with_k_outputs(tmp_path):
    """The committed net, shrunk, builds and runs forward and backward in
    pycaffe on the CPU."""
    path = small_bench_net(tmp_path)
    caffe.set_mode_cpu()
    n = caffe.Net(str(path), caffe.TRAIN)
    out = n.forward()
    assert n.blobs["my_fc8"].data.shape == (2, gen.CLASSES)
    assert n.blobs["label"].data == pytest.approx(1 / gen.CLASSES)
    assert np.isfinite(out["loss_kl"]) and out["loss_kl"] >= 0
    assert np.isfinite(out["loss_dominant"]) and out["loss_dominant"] > 0
    n.backward()
    assert np.isfinite(n.blobs["my_fc8"].diff).all()


def test_lmdb_bench_net_trains_on_the_lmdb_it_is_given(tmp_path):
    """The lmdb net, as the default one but reading the Data layer: its
    LMDB (written by --lmdb, shrunk here to 40 x 40 images) gives batches
    of images and (N, K) distribution labels, forward and backward run."""
    net = parse_net(BENCH / gen.net_name("lmdb"))
    data = net.layer[0]
    assert data.type == "Data" and data.data_param.source == gen.LMDB_SOURCE
    assert data.transform_param.crop_size == gen.CROP
    assert data.transform_param.mirror
    assert [l.type for l in net.layer][1:] == [
        l.type for l in parse_net(BENCH / gen.net_name("default")).layer][1:]
    db = tmp_path / "bench_lmdb"
    assert gen.write_lmdb(db, images=6, size=40) == 6
    data.data_param.source = str(db)
    data.data_param.batch_size = 2
    data.transform_param.crop_size = 32
    path = tmp_path / "small.prototxt"
    path.write_text(text_format.MessageToString(net))
    caffe.set_mode_cpu()
    n = caffe.Net(str(path), caffe.TRAIN)
    out = n.forward()
    assert n.blobs["data"].data.shape == (2, 3, 32, 32)
    assert n.blobs["data"].data.std() > 50  # random pixels, not a constant
    label = n.blobs["label"].data
    assert label.shape == (2, gen.CLASSES)
    assert label.sum(axis=1) == pytest.approx(1, abs=1e-4)
    assert np.isfinite(out["loss_kl"]) and out["loss_kl"] >= 0
    n.backward()
    assert np.isfinite(n.blobs["my_fc8"].diff).all()


def test_loss_layers_bench_runs_on_the_cpu_build(tmp_path):
    """loss_layers_bench, compiled as the pack compiles it but against the
    CPU build, runs both ways (both on the CPU there) over the shrunk net
    and prints the JSON summarize_h200.py reads."""
    exe = tmp_path / "loss_layers_bench"
    subprocess.run(["bash", str(BENCH / "build_loss_bench.sh"),
                    str(ROOT / "build" / "cpu"), str(exe),
                    str(ROOT / "build" / "cpu" / "build" / "lib")],
                   check=True, timeout=600)
    proc = subprocess.run([str(exe), str(small_bench_net(tmp_path)), "3",
                           "7"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GLOG_log_dir=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert (out["iterations"], out["reps"]) == (3, 7)
    assert out["device"] == "CPU (CPU_ONLY build)"
    for way in ("gpu", "cpu"):
        layers = out["layers_ms"][way]
        assert {k: v["type"] for k, v in layers.items()} == {
            "loss_kl": "SoftmaxWithKLLoss",
            "loss_dominant": "SoftmaxWithDominantLoss"}
        assert all(v["forward"] > 0 and v["backward"] > 0
                   for v in layers.values())
        assert 0 < out["share_of_iteration"][way] < 1
        assert out["isolated_us"][way] > 0
    assert out["isolated_us"]["gpu_host_sum"] > 0
    assert out["host_sum_over_device_sum"] > 0
    work = tmp_path / "work"
    work.mkdir()
    (work / "loss_layers.json").write_text(proc.stdout)
    summary = summarize.loss_layers(work)
    assert "error" not in summary
    assert summary["loss_layers_ms_gpu"] == out["loss_layers_ms"]["gpu"]
    assert summary["host_sum_over_device_sum"] == \
        out["host_sum_over_device_sum"]
    # without the usage it was given, the program says how to call it
    bad = subprocess.run([str(exe)], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_scripts_parse():
    for name in ("torch_twin", "summarize_h200", "make_prototxts"):
        py_compile.compile(str(BENCH / f"{name}.py"), doraise=True)
    for script in (BENCH / "run_h200.sh", BENCH / "build_loss_bench.sh",
                   ROOT / "tools" / "pack_gpu.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert (BENCH / "loss_layers_bench.cpp").is_file()


def test_torch_twin_matches_the_caffe_bench():
    """Same batch, K and loss weights as the Caffe net (torch itself is
    only on the GPU machine)."""
    src = (BENCH / "torch_twin.py").read_text()
    assert "LAMBDA = 0.8" in src
    assert 'ap.add_argument("--batch", type=int, default=32)' in src
    assert f'ap.add_argument("--classes", type=int, default={gen.CLASSES})' \
        in src
    assert "vgg16(weights=None, num_classes=classes)" in src


def test_pack_refuses_without_a_cuda_build(tmp_path):
    pack = ROOT / "tools" / "pack_gpu.sh"
    proc = subprocess.run([str(pack), str(tmp_path / "nothing"),
                           str(tmp_path / "pack")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no CUDA build" in proc.stderr and "make cuda" in proc.stderr
    cpu = tmp_path / "cpu" / "build"
    cpu.mkdir(parents=True)
    (cpu / "CMakeCache.txt").write_text("CPU_ONLY:BOOL=ON\n")
    proc = subprocess.run([str(pack), str(tmp_path / "cpu"),
                           str(tmp_path / "pack")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "CPU-only build" in proc.stderr
    assert not (tmp_path / "pack").exists()


def test_pack_refuses_a_build_that_links_opencv(tmp_path):
    """OpenCV's libraries need ~160 MiB of others: the pack says to build
    without it. The build here is a stand-in: a CMake cache of a CUDA build
    around the CPU build's caffe and libcaffe, which link OpenCV as the
    default CUDA build does."""
    cpu = ROOT / "build" / "cpu" / "build"
    fake = tmp_path / "cuda" / "build"
    (fake / "tools").mkdir(parents=True)
    (fake / "lib").mkdir()
    (fake / "CMakeCache.txt").write_text("CPU_ONLY:BOOL=OFF\n"
                                         "USE_OPENCV:BOOL=ON\n")
    (fake / "tools" / "caffe").symlink_to(cpu / "tools" / "caffe")
    libcaffe = sorted((cpu / "lib").glob("libcaffe.so.*"))[0]
    (fake / "lib" / libcaffe.name).symlink_to(libcaffe)
    proc = subprocess.run([str(ROOT / "tools" / "pack_gpu.sh"),
                           str(tmp_path / "cuda"), str(tmp_path / "pack")],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "-DUSE_OPENCV=OFF" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "pack").exists()
    assert not list(tmp_path.glob(".pack.partial-*"))


def shared_lib(folder, soname, value):
    """A real shared library SONAME whose function <stem>_version() returns
    value (stem: libnccl for libnccl.so.2)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{soname}.c"
    src.write_text(f"int {soname.split('.')[0]}_version(void) "
                   f"{{ return {value}; }}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o",
                    str(folder / soname), str(src)], check=True)
    src.unlink()
    return folder / soname


def launcher_pack(tmp_path):
    """The launcher pack_gpu.sh writes, in a pack whose bin/caffe needs
    libcudnn.so.9 and libnccl.so.2 (as a cuDNN + NCCL libcaffe does) and
    prints the versions it got, and whose bin/absent needs a library found
    nowhere; cuDNN and NCCL as pip wheels, nvidia/cudnn/lib and
    nvidia/nccl/lib, in site/ (PYTHONPATH), as on the GPU machine."""
    pack, link = tmp_path / "pack", tmp_path / "link"
    (pack / "bin").mkdir(parents=True)
    (pack / "lib").mkdir()
    subprocess.run([str(ROOT / "tools" / "pack_gpu.sh"), "--write-launcher",
                    str(pack / "run")], check=True, timeout=30)
    site = tmp_path / "site" / "nvidia"
    shared_lib(site / "cudnn" / "lib", "libcudnn.so.9", 9)
    shared_lib(site / "nccl" / "lib", "libnccl.so.2", 2)
    main = tmp_path / "main.c"
    main.write_text("#include <stdio.h>\nint libnccl_version(void);\n"
                    "int libcudnn_version(void);\nint main(void) {\n"
                    '  printf("cudnn %d nccl %d\\n", libcudnn_version(),'
                    " libnccl_version());\n  return 0;\n}\n")
    subprocess.run(["gcc", "-o", str(pack / "bin" / "caffe"), str(main),
                    str(shared_lib(link, "libcudnn.so.9", 0)),
                    str(shared_lib(link, "libnccl.so.2", 0))], check=True)
    main.write_text("int libjcdlabsent_version(void);\n"
                    "int main(void) { return libjcdlabsent_version(); }\n")
    subprocess.run(["gcc", "-o", str(pack / "bin" / "absent"), str(main),
                    str(shared_lib(link, "libjcdlabsent.so.1", 0))],
                   check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDNN_LIB_DIR", "NCCL_LIB_DIR", "LD_LIBRARY_PATH")}
    env.update(CUDA_HOME=str(tmp_path / "no-cuda"),
               PYTHONPATH=str(tmp_path / "site"))
    return pack, env


def test_pack_launcher_finds_cudnn_and_nccl_in_their_pip_wheels(tmp_path):
    pack, env = launcher_pack(tmp_path)
    proc = subprocess.run([str(pack / "run"), "caffe"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "cudnn 9 nccl 2\n"
    ldd = subprocess.run([str(pack / "run"), "--ldd"], env=env,
                         capture_output=True, text=True, timeout=60).stdout
    nccl = tmp_path / "site" / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
    assert f"libnccl.so.2 => {nccl}" in ldd
    # NCCL_LIB_DIR (and CUDNN_LIB_DIR) come first
    shared_lib(tmp_path / "mine", "libnccl.so.2", 5)
    proc = subprocess.run([str(pack / "run"), "caffe"], capture_output=True,
                          env=dict(env, NCCL_LIB_DIR=str(tmp_path / "mine")),
                          text=True, timeout=60)
    assert proc.stdout == "cudnn 9 nccl 5\n", proc.stderr


def test_pack_launcher_names_a_library_it_cannot_find(tmp_path):
    pack, env = launcher_pack(tmp_path)
    proc = subprocess.run([str(pack / "run"), "absent"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 127
    assert proc.stderr.startswith("run: bin/absent needs libjcdlabsent.so.1 "
                                  "and no folder has it: "), proc.stderr
    assert "NCCL_LIB_DIR" in proc.stderr


TRAIN_LOG = "\n".join(
    ["I0101 00:00:00.000000 1 solver.cpp:239] Iteration 0 (0 iter/s, "
     "0.9s/10 iters), loss = 2.1"] +
    [f"I0101 00:00:01.000000 1 solver.cpp:239] Iteration {i} (25 iter/s, "
     f"{s}s/10 iters), loss = 1.94591"
     for i, s in ((10, 0.8), (20, 0.5), (30, 0.4), (40, 0.4), (50, 0.4),
                  (60, 0.4), (70, 0.4))])
TIME_LOG = textwrap.dedent("""\
    I0101 00:00:00.000000 1 caffe.cpp:404]    conv1_1\tforward: 1.5 ms.
    I0101 00:00:00.000000 1 caffe.cpp:407]    conv1_1\tbackward: 2.5 ms.
    I0101 00:00:00.000000 1 caffe.cpp:404]    loss_kl\tforward: 0.02 ms.
    I0101 00:00:00.000000 1 caffe.cpp:407]    loss_kl\tbackward: 0.01 ms.
    I0101 00:00:00.000000 1 caffe.cpp:410] Average Forward pass: 10 ms.
    I0101 00:00:00.000000 1 caffe.cpp:412] Average Backward pass: 20 ms.
    I0101 00:00:00.000000 1 caffe.cpp:414] Average Forward-Backward: 30.5 ms.
    """)


def test_summaries_read_the_real_caffe_tools_logs(tmp_path):
    """The display and timing lines summarize_h200.py parses are the ones
    this Caffe prints: `caffe train` and `caffe time` of the CPU build on
    the shrunk bench net."""
    net = small_bench_net(tmp_path)
    solver = text_format.Parse((BENCH / gen.solver_name("default")).read_text(),
                               pb.SolverParameter())
    solver.net = str(net)
    solver.max_iter = summarize.WARMUP_ITERS + 2 * solver.display + 1
    solver.solver_mode = pb.SolverParameter.CPU
    (tmp_path / "solver.prototxt").write_text(
        text_format.MessageToString(solver))
    tool = str(ROOT / ".venv" / "bin" / "caffe")
    env = dict(os.environ)
    env.pop("GLOG_minloglevel", None)  # import_caffe's, in this process
    train = subprocess.run([tool, "train", "--solver",
                            str(tmp_path / "solver.prototxt")],
                           capture_output=True, text=True, timeout=300,
                           env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    speed = summarize.parse_train_log(train.stderr, batch=2)
    assert speed is not None, train.stderr[-2000:]
    assert speed["iterations_timed"] == 2 * solver.display
    assert speed["first_timed_iteration"] == summarize.WARMUP_ITERS
    assert speed["img_per_s"] > 0 and speed["ms_per_iter"] > 0
    time = subprocess.run([tool, "time", "-model", str(net), "-iterations",
                           "2"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert time.returncode == 0, time.stderr[-2000:]
    prof = summarize.parse_time_log(time.stderr)
    assert prof["forward_backward_ms"] > 0
    assert set(prof["layers"]["loss_kl"]) == {"forward", "backward"}
    # every layer of the net (and the Split layers Caffe inserts)
    assert {l.name for l in parse_net(net).layer} < set(prof["layers"])


def test_summaries_of_caffe_logs():
    t = summarize.parse_train_log(TRAIN_LOG)
    # intervals ending at 30..70 cover iterations 20..69: 50 at 40 ms
    assert t["iterations_timed"] == 50 and t["first_timed_iteration"] == 20
    assert t["ms_per_iter"] == pytest.approx(40.0)
    assert t["img_per_s"] == pytest.approx(800.0)
    assert summarize.parse_train_log("no timing here") is None
    p = summarize.parse_time_log(TIME_LOG)
    assert p["layers"]["conv1_1"] == {"forward": 1.5, "backward": 2.5}
    assert p["forward_backward_ms"] == 30.5
    assert summarize.top_layers(p, 1)[0]["layer"] == "conv1_1"
    assert summarize.physical_share(1000) == pytest.approx(
        1000 * 46.5e9 / 495e12, rel=1e-3)


def test_choices_compare_variants_of_the_same_run():
    v = {"default": {"img_per_s": 1000.0},
         "caffe_engine": {"img_per_s": 250.0},
         "cudnn_ws256": {"img_per_s": 1100.0},
         "cudnn_ws1024": {"img_per_s": 1050.0},
         "cudnn_find": {"img_per_s": 1200.0},
         "cudnn_no_tf32": {"img_per_s": 500.0},
         "lmdb": {"error": "no timed iterations"}}
    c = summarize.choices(v)
    assert c["cudnn_over_caffe_engine"] == 4.0
    assert c["best_workspace_variant"] == "cudnn_ws256"
    assert c["best_workspace_over_8mib"] == 1.1
    assert c["measured_over_heuristics_8mib"] == 1.2
    assert c["measured_over_heuristics_1024mib"] is None  # not measured
    assert c["tf32_over_strict_fp32"] == 2.0
    assert c["lmdb_over_constant_data"] is None           # failed


LOSS_JSON = {
    "device": "stub", "model": "m", "iterations": 3, "reps": 10,
    "iteration_ms": {"gpu": {"median": 40.0, "mean": 40.1},
                     "cpu": {"median": 40.5, "mean": 40.6}},
    "layers_ms": {"gpu": {"loss_kl": {"type": "SoftmaxWithKLLoss",
                                      "forward": 0.03, "backward": 0.01}},
                  "cpu": {"loss_kl": {"type": "SoftmaxWithKLLoss",
                                      "forward": 0.3, "backward": 0.2}}},
    "loss_layers_ms": {"gpu": 0.04, "cpu": 0.5},
    "isolated_us": {"gpu": 30.0, "cpu": 600.0},
    "share_of_iteration": {"gpu": 0.001, "cpu": 0.0123},
    "cpu_over_gpu": {"isolated": 20.0, "in_net": 12.5}}


def stub_pack(path):
    """A pack whose run prints canned outputs instead of running Caffe."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "test.testbin").write_text("")
    (path / "bin" / "test.testbin").chmod(0o755)
    (path / "BUILD_INFO").write_text("USE_CUDNN=ON\nCUDA_ARCH_BIN=90\n")
    (path / "loss.json").write_text(json.dumps(LOSS_JSON))
    (path / "train.log").write_text(TRAIN_LOG + "\n")
    (path / "time.log").write_text(TIME_LOG)
    run = path / "run"
    run.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        here=$(dirname "$0"); tool=$1; shift
        case $tool in
          --ldd) echo "== stub" ;;
          caffe) case $1 in
                   train) cat "$here/train.log" ;;
                   time) cat "$here/time.log" ;;
                 esac ;;
          loss_layers_bench) cat "$here/loss.json" ;;
          test.testbin)
            echo "[==========] Running 2 tests ($* ${GTEST_SHARD_INDEX:-}" \
                 "find=$CAFFE_CUDNN_FIND tf32=$NVIDIA_TF32_OVERRIDE)"
            if [ -n "${STUB_CRASH_SHARD:-}" ] &&
               [ "${GTEST_SHARD_INDEX:-}" = "$STUB_CRASH_SHARD" ]; then
              echo "F0101 a CHECK failed"; exit 134
            fi
            echo "[==========] 2 tests from 1 test suite ran. (5 ms total)"
            echo "[  PASSED  ] 2 tests." ;;
        esac
        """))
    run.chmod(0o755)


def run_h200(tmp_path, **env):
    """run_h200.sh on a stub pack (made once per tmp_path) with env added;
    returns (stdout, the OUT folder). It must exit 0."""
    pack, out = tmp_path / "pack", tmp_path / "out"
    if not pack.exists():
        stub_pack(pack)
    proc = subprocess.run([str(BENCH / "run_h200.sh"), str(pack)], cwd=ROOT,
                          env=dict(os.environ, OUT=str(out), **env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, out


def test_run_h200_writes_its_result_files(tmp_path):
    # the GPU machine's python3 has torch; here the twin fails, and the
    # results say so (torch_img_per_s null) instead of the run stopping
    _, out = run_h200(tmp_path, BUDGET_S="300", SHARDS="3", WORKERS="2")
    assert sorted(p.name for p in out.iterdir()) == [
        "h200-gtest.txt", "h200-loss-layers.json", "h200-raw.tar.gz",
        "h200-run.log", "h200-train-throughput.json"]
    t = json.loads((out / "h200-train-throughput.json").read_text())
    for key in ("device", "caffe_img_per_s", "torch_img_per_s", "batch",
                "date", "caffe_settings", "torch_settings",
                "physical_limit"):
        assert key in t
    assert t["batch"] == 32 and t["caffe_img_per_s"] == pytest.approx(800)
    assert t["caffe_choices"]["cudnn_over_caffe_engine"] == 1.0  # one log
    assert set(t["caffe_variants"]) == {
        "default", "cudnn_ws64", "cudnn_ws256", "cudnn_ws1024", "cudnn_find",
        "cudnn_find_ws1024", "cudnn_no_tf32", "caffe_engine", "lmdb"}
    assert t["caffe_variants"]["lmdb"]["settings"]["data"].startswith("lmdb")
    assert t["caffe_variants"]["default"]["settings"]["data"] == "constant"
    ws = t["caffe_variants"]["cudnn_ws256"]["settings"]
    assert ws["env"] == "CAFFE_CUDNN_WORKSPACE_MB=256"
    assert ws["cudnn_workspace_limit_mib"] == "256"
    find = t["caffe_variants"]["cudnn_find_ws1024"]["settings"]
    assert find["env"] == "CAFFE_CUDNN_FIND=1 CAFFE_CUDNN_WORKSPACE_MB=1024"
    assert find["cudnn_algorithm_choice"] == "measured"
    assert t["caffe_settings"]["variant"]["engine"] == "cudnn"
    assert t["physical_limit"]["caffe_share"] == pytest.approx(
        800 * 46.5e9 / 495e12, rel=1e-3)
    loss = json.loads((out / "h200-loss-layers.json").read_text())
    assert loss["share_of_iteration"] == 0.001
    assert loss["cpu_over_gpu_isolated"] == 20.0
    assert loss["share_of_train_step"] == pytest.approx(0.04 / 40)
    assert loss["goals"]["share_met"] and loss["goals"]["speedup_met"]
    gtest = (out / "h200-gtest.txt").read_text()
    assert gtest.count("######## gtest ") == 3 + 3
    assert gtest.count("[  PASSED  ] 2 tests.") == 6
    assert "CAFFE_CUDNN_FIND=1" in gtest
    assert gtest.count("find=1 ") == 1 and gtest.count("find=0 ") == 5
    assert gtest.count("tf32=0)") == 6     # upstream's tolerances: strict fp32
    assert "GTEST_TOTAL_SHARDS=3 GTEST_SHARD_INDEX=2" in gtest
    assert "not run" not in gtest


def test_run_h200_keeps_the_benchmarks_within_their_budget(tmp_path):
    """The issue's numbers come first (default, torch twin, loss layers,
    its profile); a spent benchmark budget skips steps instead of eating
    the gtests' time, and the result files are still written."""
    log, out = run_h200(tmp_path, BUDGET_S="300", SHARDS="1",
                        BENCH_BUDGET_S="5")
    assert "SKIPPED (benchmarks' budget spent)" in log
    t = json.loads((out / "h200-train-throughput.json").read_text())
    assert t["caffe_img_per_s"] is None and t["batch"] == 32
    assert (out / "h200-gtest.txt").read_text().count("[  PASSED  ]") == 4
    log, _ = run_h200(tmp_path, PARTS="bench", BENCH_BUDGET_S="300")
    steps = [line.split("] ", 1)[1].split(":")[0].split(" (")[0]
             for line in log.splitlines()
             if line.startswith("[run_h200") and ("caffe " in line or
                                                  "torch" in line or
                                                  "loss_layers" in line)]
    assert steps[:5] == ["caffe train", "torch twin", "loss_layers_bench",
                         "caffe time", "caffe train"], steps


def run_gtest_only(tmp_path, **env):
    log, out = run_h200(tmp_path, PARTS="gtest", SHARDS="3", **env)
    assert not (out / "h200-train-throughput.json").exists()  # no bench
    return log, (out / "h200-gtest.txt").read_text()


def test_run_h200_follow_up_runs_only_the_named_gtest_jobs(tmp_path):
    log, gtest = run_gtest_only(tmp_path, BUDGET_S="300",
                                JOBS="upstream-1 ours")
    heads = [l for l in gtest.splitlines() if l.startswith("########")]
    assert [h.split(":")[0] for h in heads] == [
        "######## gtest upstream-1", "######## gtest ours"]
    assert "GTEST_TOTAL_SHARDS=3 GTEST_SHARD_INDEX=1" in gtest
    assert "2 passed, 0 did not pass, 0 not run" in log


def test_run_h200_names_a_job_cut_off_before_its_summary(tmp_path):
    """A shard that crashed (or was stopped at the deadline) has no gtest
    summary: it is named, and the follow-up JOBS list has it."""
    log, gtest = run_gtest_only(tmp_path, BUDGET_S="300", JOBS="upstream-1 "
                                "upstream-2 ours", STUB_CRASH_SHARD="2")
    assert "######## gtest cut off before their summary: upstream-2" in gtest
    assert "2 passed, 1 did not pass, 0 not run" in log
    assert 'PARTS=gtest JOBS="upstream-2" SHARDS=3' in log


def test_run_h200_names_the_gtest_jobs_it_had_no_time_for(tmp_path):
    # 20 s of budget, and a job needs 45 s left to start: none starts
    log, gtest = run_gtest_only(tmp_path, BUDGET_S="20", MIN_JOB_S="45")
    assert gtest.strip() == ("######## gtest not run (no time left in this "
                             "run): ours cudnn cudnn-find upstream-0 "
                             "upstream-1 upstream-2")
    assert ('PARTS=gtest JOBS="ours cudnn cudnn-find upstream-0 upstream-1 '
            'upstream-2" SHARDS=3') in log
