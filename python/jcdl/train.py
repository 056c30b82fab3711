"""``jcdl train``: pycaffe's solver driven from Python, for any solver and
net that ``caffe train`` accepts.

What it adds to ``caffe train``:

- checks before Caffe starts (files, LMDBs, K of the LMDB against the net's
  output count, weights and solverstates that fit the net), so bad input is
  one clear line instead of a CHECK abort;
- a progress bar, and Caffe's glog-format log lines on stderr (and
  ``--log``), so ``jcdl plot`` and Caffe's log tools read them;
- at each test, where a test net feeds logits to a distribution loss, the
  six label-distribution measures and accuracy as further
  ``Test net output`` lines;
- snapshots under Caffe's names (``<prefix>_iter_<N>.caffemodel`` and
  ``.solverstate``) that appear complete or not at all: Caffe writes them
  into a temporary folder beside them, then they are renamed, the
  caffemodel first, with the solverstate's ``learned_net`` naming the final
  caffemodel;
- Ctrl-C: a snapshot at the current iteration, the command that resumes
  from it, exit 0;
- a loss of nan or inf stops training with a clear error.

Paths inside the solver and the nets are relative to the working directory,
as with ``caffe train``.
"""
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from google.protobuf import text_format

from .errors import JcdlError
from .files import check_output_file, claim_outputs
from .caffenet import (caffe_pb2, check_weights, cuda_libraries, import_caffe,
                       read_caffemodel, use_device)
from .checks import (check_history, check_net, read_solver, read_solverstate,
                     set_learned_net, solver_nets, solver_type)
from .multigpu import gpus_arg
from .trainer import (Log, Trainer, remove_stale_temporaries,
                      snapshot_prefix)

# ----------------------------------------------------------- devices

def select_device(caffe, solver, solver_path, gpu, log):
    """Sets Caffe's mode like ``caffe train``: --gpu wins, else the
    solver's solver_mode/device_id. A GPU solver on a CPU-only Caffe trains
    on the CPU, with a warning."""
    pb = caffe_pb2()
    if gpu is None and solver.solver_mode == pb.SolverParameter.GPU:
        if not cuda_libraries():
            log.line("W", "caffe.cpp:183", f"{solver_path} asks for the GPU "
                     "but this Caffe is CPU-only: training on the CPU")
            caffe.set_mode_cpu()
            return "CPU"
        gpu = solver.device_id
    use_device(caffe, gpu)
    return "CPU" if gpu is None else f"GPU {gpu}"


def check_run(solver_path, weights=None, resume=None):
    """What train checks before Caffe starts: the solver, its nets, the
    weights to fine-tune from (comma-separated) and the solverstate to
    resume from. Returns (param, train_net, test_nets, tests, models,
    state, learned, learned_model)."""
    pb = caffe_pb2()
    param = read_solver(solver_path)
    if weights and resume:
        raise JcdlError(resume, "give a solverstate to resume or weights to "
                        "fine-tune from, not both")
    if param.snapshot_format != pb.SolverParameter.BINARYPROTO:
        raise JcdlError(solver_path, "snapshot_format HDF5 is not supported "
                        "by jcdl train (use BINARYPROTO, the default)")
    train_net, test_nets = solver_nets(param, solver_path)
    check_net(train_net[0], train_net[1], pb.TRAIN,
              param.train_state if param.HasField("train_state") else None)
    tests = [check_net(net, where, pb.TEST,
                       param.test_state[i] if param.test_state else None)
             for i, (net, where) in enumerate(test_nets)]
    weight_files = [w for w in (weights or "").split(",") if w]
    models = []
    for w in weight_files:
        if w.endswith(".h5"):  # HDF5 weights: Caffe checks them itself
            if not Path(w).is_file():
                raise JcdlError(w, "no such weights file")
            models.append((w, None))
        else:
            models.append((w, read_caffemodel(w)))
    state = learned = None
    if resume:
        state, learned = read_solverstate(resume)
        learned_model = read_caffemodel(learned, "caffemodel of the "
                                        "solverstate")
    else:
        learned_model = None
    return (param, train_net, test_nets, tests, models, state, learned,
            learned_model)


def train(solver_path, weights=None, gpu=None, resume=None, log=None,
          progress=True, echo=True, interrupt_raises=False):
    """Trains as ``caffe train`` would; returns the path of the last
    caffemodel written (None when nothing was snapshotted). Ctrl-C
    snapshots and returns, or with ``interrupt_raises`` (a caller that
    trains more than once) raises KeyboardInterrupt after the snapshot."""
    pb = caffe_pb2()
    solver_path = str(solver_path)
    (param, train_net, test_nets, tests, models, state, learned,
     learned_model) = check_run(solver_path, weights, resume)
    weight_files = [w for w, _ in models]

    if log:
        data = [layer for net in [train_net[0], *(n for n, _ in test_nets)]
                for layer in net.layer if layer.type == "Data"]
        means = [layer.transform_param.mean_file for layer in data
                 if layer.transform_param.mean_file]
        check_output_file(log, solver_path, train_net[1],
                          *(w for _, w in test_nets), *weight_files,
                          resume, learned, *means)
        for layer in data:
            source = Path(layer.data_param.source)
            if source.is_dir() and source.resolve() in \
                    Path(log).resolve().parents:
                raise JcdlError(log, f"is inside the LMDB {source}: write "
                                "the log elsewhere")
    caffe = import_caffe()
    logger = Log(log, append=bool(resume), echo=echo)
    try:
        device = select_device(caffe, param, solver_path, gpu, logger)
        prefix = snapshot_prefix(param, solver_path)
        folder = Path(os.path.dirname(prefix + "_iter_0") or ".")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
            temporary = tempfile.TemporaryDirectory(
                prefix=f".jcdl-train-{os.getpid()}-", dir=folder)
        except OSError as e:
            raise JcdlError(folder, "cannot write snapshots here "
                            f"({e.strerror})") from None
        with temporary as tmp, claim_outputs(log, prefix):
            tmp_prefix = os.path.join(tmp, "snapshot")
            copy = pb.SolverParameter()
            copy.CopyFrom(param)
            # Caffe's own testing, display and snapshots off: done here
            copy.snapshot, copy.display = 0, 0
            copy.test_interval, copy.test_initialization = 2 ** 31 - 1, False
            copy.snapshot_prefix = tmp_prefix
            copy_path = os.path.join(tmp, "solver.prototxt")
            try:
                Path(copy_path).write_text(
                    text_format.MessageToString(copy))
            except OSError as e:
                raise JcdlError(folder, "cannot write snapshots here "
                                f"({e.strerror})") from None
            logger.info("caffe.cpp:218", f"Using {device}")
            solver = caffe.get_solver(copy_path)
            for w, model in models:
                if model is not None:
                    check_weights(w, model, solver.net)
                logger.info("caffe.cpp:248", f"Finetuning from {w}")
                solver.net.copy_from(w)
            if state is not None:
                check_weights(learned, learned_model, solver.net)
                check_history(resume, state, solver.net,
                              solver_type(param, solver_path))
                logger.info("solver.cpp:296", "Restoring previous solver "
                            f"status from {resume}")
                if Path(state.learned_net) != learned:
                    # its caffemodel lies beside it, not where it says
                    fixed = os.path.join(tmp, "resume.solverstate")
                    shutil.copyfile(resume, fixed)
                    set_learned_net(fixed, learned.resolve())
                    resume_from = fixed
                else:
                    resume_from = resume
                solver.restore(str(resume_from))
            trainer = Trainer(solver, param, solver_path, prefix,
                               tmp_prefix, tests, logger)
            if solver.iter < param.max_iter and not trainer.reserve():
                free = os.statvfs(folder)
                raise JcdlError(folder, "no room for a snapshot (No space "
                                f"left on device: {trainer.room_needed()} "
                                f"bytes needed, {free.f_bavail * free.f_frsize}"
                                " free): make room, or snapshot elsewhere")
            if state is not None:
                trainer.last_snapshot = (solver.iter, str(learned), resume)
            logger.start_file()
            logger.info("solver.cpp:289", f"Solving {train_net[0].name}")
            logger.info("solver.cpp:290",
                        f"Learning Rate Policy: {param.lr_policy}")
            model = _train_loop(trainer, param, solver_path, gpu, log,
                                progress, say_resume=not interrupt_raises)
            if trainer.stop and interrupt_raises:
                raise KeyboardInterrupt
            return model
    finally:
        logger.close()


# the signals that stop training with a snapshot, as Ctrl-C does: SIGTERM
# (kill, a job scheduler, systemd) and SIGHUP (the terminal closed; the
# stock caffe snapshots and goes on, by its -sighup_effect). One ignored
# when jcdl started stays ignored: under nohup a hang-up does not stop it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _train_loop(trainer, param, solver_path, gpu, log, progress,
                say_resume=True):
    solver = trainer.solver
    previous = {}
    main = threading.current_thread() is threading.main_thread()

    def on_signal(signum, frame):
        if trainer.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        trainer.stop = True

    if main:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, on_signal)
    try:
        trainer.run(progress)
        if trainer.log.failed:
            trainer.fail(*trainer.log.failed)
        last = trainer.last_snapshot
        if (trainer.stop or param.snapshot_after_train) and \
                (last is None or last[0] != solver.iter):
            trainer.snapshot()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    command = None
    if trainer.last_snapshot is not None:
        command = ["jcdl", "train", "--solver", solver_path,
                   "--resume", str(trainer.last_snapshot[2])]
        if gpu is not None:
            command += ["--gpu", str(gpu)]
        if log:
            command += ["--log", str(log)]
        command = " ".join(shlex.quote(c) for c in command)
    if trainer.failure:
        path, why = trainer.failure
        trainer.log.line("E", "solver.cpp:311", f"{path}: cannot write "
                         f"({why}): optimization stopped.")
        what = "stopped"
        if command and say_resume:   # (a caller that trains more says)
            what += (f" at iteration {trainer.last_snapshot[0]}, its "
                     f"snapshot kept; make room, then resume with: "
                     f"{command}")
        elif not command:
            what += ", with no snapshot"
        raise JcdlError(path, f"cannot write ({why}): training {what}")
    if trainer.last_snapshot is None:
        return None
    if trainer.stop:
        trainer.log.info("solver.cpp:311", "Optimization stopped early.")
        if say_resume:
            print(f"jcdl train: interrupted at iteration {solver.iter}; "
                  f"resume with:\n  {command}", file=sys.stderr)
    return trainer.last_snapshot[1]


def _run(args):
    if isinstance(args.gpu, (list, str)):  # several GPUs: Caffe's own way
        from .multigpu import train_on_gpus  # noqa: PLC0415
        return train_on_gpus(args.solver, args.gpu, args.weights,
                             args.resume, args.log)
    model = train(args.solver, weights=args.weights, gpu=args.gpu,
                  resume=args.resume, log=args.log)
    if model:
        print(model)


def register(sub):
    p = sub.add_parser(
        "train", help="train with a Caffe solver (like caffe train)",
        description="Trains the net of a Caffe solver with pycaffe, like "
        "'caffe train': Caffe-format log lines (with the six label-"
        "distribution measures at each test), snapshots under Caffe's names, "
        "Ctrl-C snapshots and prints the resume command. Paths in the "
        "solver and nets are relative to the working directory, as in "
        "caffe.")
    p.add_argument("--solver", required=True, metavar="S",
                   help="solver prototxt")
    p.add_argument("--weights", metavar="W",
                   help="caffemodel(s) to fine-tune from, comma-separated "
                   "(e.g. models/VGG_ILSVRC_16_layers.caffemodel)")
    p.add_argument("--gpu", type=gpus_arg, metavar="N|N,M,...|all",
                   help="train on GPU N (needs the GPU build in .venv: "
                   "CUDA=1 make); several GPUs (0,1 or all) train with "
                   "Caffe's own multi-GPU engine (NCCL) through 'caffe "
                   "train -gpu', the batch per GPU; default: the solver's "
                   "solver_mode (on the CPU build a GPU solver trains on the "
                   "CPU, with a warning)")
    p.add_argument("--resume", metavar="STATE",
                   help="continue from a .solverstate snapshot")
    p.add_argument("--log", metavar="FILE",
                   help="also write the log lines to FILE (appended when "
                   "resuming)")
    p.set_defaults(func=_run)
