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
import errno
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from .errors import JcdlError
from .files import (WRITE_ERRNOS, check_output_file, claim_outputs,
                    make_folder_for)
from .caffenet import (caffe_pb2, check_weights, cuda_libraries, import_caffe,
                       read_caffemodel, use_device)
from .checks import (check_history, check_net, read_solver, read_solverstate,
                     set_learned_net, solver_nets, solver_type)
from .metrics import MEASURES, summary
from .multigpu import gpus_arg

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


# ---------------------------------------------------------------- log

class Log:
    """Caffe's glog line format, on stderr (above the progress bar; not with
    echo False) and in an optional file. The file is checked at once but
    opened (truncated unless appending) only by ``start_file``, once the
    set-up succeeded: a run that fails before training leaves an earlier
    log as it was. Until then its lines are kept."""

    def __init__(self, path=None, append=False, echo=True):
        self.echo, self.path, self.append = echo, path, append
        self.file, self.pending = None, []
        self.failed = None  # (path, why) once a write failed (a full disk)
        if path:
            target = Path(path)
            if not target.is_dir():
                make_folder_for(target)
            why = ("is a folder" if target.is_dir() else
                   "not writable" if not os.access(
                       target if target.exists() else target.parent,
                       os.W_OK)
                   else None)
            if why:
                raise JcdlError(path, f"cannot write the log ({why})")
        self.tid = threading.get_native_id()

    def start_file(self):
        if not self.path:
            return
        try:
            self.file = open(self.path, "a" if self.append else "w")
            self.file.writelines(self.pending)
            self.file.flush()
        except OSError as e:
            raise JcdlError(self.path, "cannot write the log "
                            f"({e.strerror})") from None
        self.pending = []

    def line(self, level, where, message):
        now = datetime.now()
        text = (f"{level}{now:%m%d %H:%M:%S.%f} {self.tid:>5} {where}] "
                f"{message}")
        if self.echo:
            from tqdm import tqdm  # noqa: PLC0415
            tqdm.write(text, file=sys.stderr)
        if self.file:
            try:
                self.file.write(text + "\n")
                self.file.flush()
            except OSError as e:   # training stops at its next step
                self.failed = (self.path, e.strerror)
                broken, self.file = self.file, None
                try:
                    broken.close()
                except OSError:
                    pass
        elif self.path and not self.failed:
            self.pending.append(text + "\n")

    def info(self, where, message):
        self.line("I", where, message)

    def close(self):
        if self.file:
            self.file.close()


def _value(v):
    return f"{float(v):.6g}"


# ---------------------------------------------------------- training

class _Trainer:
    def __init__(self, solver, param, solver_path, prefix, tmp_prefix, tests,
                 log):
        self.solver, self.param, self.solver_path = solver, param, solver_path
        self.prefix, self.tmp_prefix = prefix, tmp_prefix
        self.tests, self.log = tests, log  # tests: [(logits, label) | None]
        self.last_snapshot = None  # (iteration, caffemodel, solverstate)
        self.stop = False
        self.failure = None  # (file, why): a write failed, training stops
        self.snapshot_bytes = None  # the size of the last snapshot

    # Caffe aborts the process (a CHECK) when a snapshot cannot be
    # written: the room for the next one is held by a reserve file,
    # released just before Caffe writes it and taken again after; when it
    # cannot be taken again, training stops with the snapshot just written
    def room_needed(self):
        """Bytes the next snapshot needs: the last one's, or before any,
        the parameters as floats, once for the caffemodel and twice for the
        solverstate's history (Adam's two), and a little more."""
        if self.snapshot_bytes:
            return self.snapshot_bytes + (64 << 10)
        n = sum(blob.data.size for blobs in self.solver.net.params.values()
                for blob in blobs)
        return int(4 * n * 3 * 1.05) + (64 << 10)

    def reserve(self):
        """Takes the room for the next snapshot; False on a full disk."""
        path = os.path.join(os.path.dirname(self.tmp_prefix), "reserve")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.room_needed())
            finally:
                os.close(fd)
        except OSError as e:
            if os.path.exists(path):
                os.unlink(path)
            return e.errno not in WRITE_ERRNOS  # unsupported: no reserve
        return True

    def release(self):
        path = os.path.join(os.path.dirname(self.tmp_prefix), "reserve")
        if os.path.exists(path):
            os.unlink(path)

    def fail(self, path, why):
        """A write failed: training stops (with a snapshot where there is
        room for one)."""
        if self.failure is None:
            self.failure = (str(path), why)
        self.stop = True

    def snapshot(self):
        """Caffe's snapshot into the temporary prefix, then renamed: the
        caffemodel first, then the solverstate that names it. Where there
        is no room for it, none is written and training stops."""
        it = self.solver.iter
        tmp_model, tmp_state = snapshot_names(self.tmp_prefix, it)
        model, state_path = snapshot_names(self.prefix, it)
        folder = os.path.dirname(self.tmp_prefix)
        self.release()
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < self.room_needed():
            self.fail(os.path.dirname(model) or ".",
                      os.strerror(errno.ENOSPC))
            return
        self.solver.snapshot()
        set_learned_net(tmp_state, model)
        for path in (tmp_model, tmp_state):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_model, model)
        self.log.info("solver.cpp:464",
                      f"Snapshotting to binary proto file {model}")
        os.replace(tmp_state, state_path)
        self.log.info("sgd_solver.cpp:284", "Snapshotting solver state to "
                      f"binary proto file {state_path}")
        self.last_snapshot = (it, model, state_path)
        self.snapshot_bytes = sum(os.path.getsize(f)
                                  for f in (model, state_path))
        if not self.reserve():
            self.fail(os.path.dirname(model) or ".",
                      os.strerror(errno.ENOSPC))

    # testing
    def test_all(self):
        for i, net in enumerate(self.solver.test_nets):
            if not self.test(i, net):
                return

    def test(self, index, net):
        it = self.solver.iter
        self.log.info("solver.cpp:347",
                      f"Iteration {it}, Testing net (#{index})")
        net.share_with(self.solver.net)
        sums = {}
        P, Q = [], []
        blobs = self.tests[index]
        for _ in range(self.param.test_iter[index]):
            if self.stop:
                self.log.info("solver.cpp:396", "Test interrupted.")
                return False
            net.forward()
            for name in net.outputs:
                value = net.blobs[name].data.astype(np.float64).ravel()
                sums[name] = sums.get(name, 0) + value
            if blobs:
                logits = net.blobs[blobs[0]].data
                logits = logits.reshape(len(logits), -1).astype(np.float64)
                label = net.blobs[blobs[1]].data
                label = label.reshape(len(label), -1)
                if label.shape == logits.shape:
                    z = logits - logits.max(axis=1, keepdims=True)
                    q = np.exp(z)
                    Q.append(q / q.sum(axis=1, keepdims=True))
                    P.append(label.astype(np.float64))
        index_out = self.log_outputs("Test", "solver.cpp:414", net, {
            name: total / self.param.test_iter[index]
            for name, total in sums.items()})
        try:   # labels that are not distributions have no LDL measures
            values = summary(np.concatenate(P), np.concatenate(Q)) \
                if P else None
        except ValueError as e:
            self.log.line("W", "solver.cpp:414", f"    no LDL measures: "
                          f"the labels are not distributions ({e})")
            values = None
        if values is not None:
            for name in MEASURES + ("accuracy",):
                shown = f"ldl_{name}" if name in net.outputs else name
                self.log.info("solver.cpp:414", f"    Test net output "
                              f"#{index_out}: {shown} = "
                              f"{_value(values[name])}")
                index_out += 1
        return True

    # the loop
    def net_loss(self):
        net = self.solver.net
        weights = net.blob_loss_weights
        return sum(weights.get(name, 0) * float(net.blobs[name].data.sum())
                   for name in net.outputs)

    def run(self, progress):
        from tqdm import tqdm  # noqa: PLC0415
        p, solver = self.param, self.solver
        average = max(p.average_loss, 1)
        losses = []
        timer, timer_iter = time.time(), solver.iter
        bar = tqdm(total=p.max_iter, initial=solver.iter, unit="iter",
                   desc="train", file=sys.stderr,
                   disable=None if progress else True, leave=False)
        try:
            while solver.iter < p.max_iter and not self.stop:
                if self.log.failed:
                    self.fail(*self.log.failed)
                    break
                it = solver.iter
                if p.test_interval and it % p.test_interval == 0 and \
                        (it > 0 or p.test_initialization):
                    self.test_all()
                    if self.stop:
                        break
                lr = getattr(solver, "lr", None)
                solver.step(1)
                loss = self.net_loss()
                if not math.isfinite(loss):
                    self.diverged(it, loss)
                losses = (losses + [loss])[-average:]
                smoothed = sum(losses) / len(losses)
                bar.set_postfix(loss=f"{smoothed:.4g}", refresh=False)
                bar.update(1)
                if p.display and it % p.display == 0:
                    lapse = time.time() - timer
                    rate = (it - timer_iter) / (lapse or 1)
                    self.log.info("solver.cpp:239", f"Iteration {it} "
                                  f"({rate:.4g} iter/s, {lapse:.4g}s/"
                                  f"{p.display} iters), loss = "
                                  f"{_value(smoothed)}")
                    timer, timer_iter = time.time(), it
                    net = solver.net
                    self.log_outputs("Train", "solver.cpp:258", net, {
                        name: net.blobs[name].data.ravel()
                        for name in net.outputs})
                    if lr is not None:
                        self.log.info("sgd_solver.cpp:112",
                                      f"Iteration {it}, lr = {_value(lr)}")
                if p.snapshot and solver.iter % p.snapshot == 0:
                    self.snapshot()
        finally:
            bar.close()
        if self.stop:
            return
        if p.display and solver.iter % p.display == 0:
            self.solver.net.forward()
            self.log.info("solver.cpp:327", f"Iteration {solver.iter}, "
                          f"loss = {_value(self.net_loss())}")
        if p.test_interval and solver.iter % p.test_interval == 0:
            self.test_all()
        self.log.info("solver.cpp:332", "Optimization Done.")

    def diverged(self, it, loss):
        """A loss of inf or nan: the weights are lost, and Caffe would go
        on training garbage; stop."""
        message = (f"the loss is {loss} at iteration {it}: training "
                   "diverged (lower base_lr?)")
        self.log.line("E", "solver.cpp:239", message)
        raise JcdlError(self.solver_path, message)

    def log_outputs(self, kind, where, net, values):
        """Caffe's '<kind> net output #i: name = v' lines, each loss with
        its weight; returns the number of lines."""
        weights = net.blob_loss_weights
        index = 0
        for name in net.outputs:
            for v in values[name]:
                w = weights.get(name, 0)
                extra = f" (* {_value(w)} = {_value(w * v)} loss)" if w else ""
                self.log.info(where, f"    {kind} net output #{index}: "
                              f"{name} = {_value(v)}{extra}")
                index += 1
        return index


def snapshot_names(prefix, it):
    """Caffe's (caffemodel, solverstate) names of iteration ``it``."""
    return (f"{prefix}_iter_{it}.caffemodel",
            f"{prefix}_iter_{it}.solverstate")


def snapshot_prefix(solver, solver_path):
    """The snapshot prefix as Caffe completes it: the solver file without
    its extension when unset; DIR/<solver stem> when it is a folder."""
    if not solver.HasField("snapshot_prefix"):
        return os.path.splitext(str(solver_path))[0]
    if os.path.isdir(solver.snapshot_prefix):
        return os.path.join(solver.snapshot_prefix,
                            Path(solver_path).stem)
    return solver.snapshot_prefix


def remove_stale_temporaries(folder):
    """Removes the temporary folders of earlier runs in the snapshot folder
    whose process is gone (Caffe aborted it, or it was killed)."""
    for stale in folder.glob(".jcdl-train-*-*"):
        pid = stale.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


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
            trainer = _Trainer(solver, param, solver_path, prefix,
                               tmp_prefix, tests, logger)
            if not trainer.reserve():
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
# stock caffe snapshots and goes on, by its -sighup_effect)
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
