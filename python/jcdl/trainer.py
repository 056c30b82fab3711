"""The pieces of ``jcdl train``'s loop: Caffe's glog line format (Log),
the Trainer that steps pycaffe's solver, tests with the LDL measures and
writes snapshots that appear complete or not at all, and Caffe's snapshot
names."""
import errno
import math
import os
import re
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import JcdlError
from .files import WRITE_ERRNOS, make_folder_for, remove
from .checks import set_learned_net
from .metrics import MEASURES, summary


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

class Trainer:
    def __init__(self, solver, param, solver_path, prefix, tmp_prefix, tests,
                 log):
        self.solver, self.param, self.solver_path = solver, param, solver_path
        self.prefix, self.tmp_prefix = prefix, tmp_prefix
        self.tests, self.log = tests, log  # tests: [(logits, label) | None]
        self.last_snapshot = None  # (iteration, caffemodel, solverstate)
        self.stop = False
        self.failure = None  # (file, why): a write failed, training stops
        self.snapshot_bytes = None  # the size of the last snapshot

    # The room for the next snapshot is held by a reserve file, released
    # just before Caffe writes it and taken again after; when it cannot be
    # taken again, training stops with the snapshot just written. Should
    # another process take the room in between, Caffe's write fails (it
    # throws, by patch 0013, rather than aborting) and training stops with
    # the snapshot before
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
            remove(path)
            return e.errno not in WRITE_ERRNOS  # unsupported: no reserve
        return True

    def release(self):
        remove(os.path.join(os.path.dirname(self.tmp_prefix), "reserve"))

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
        try:
            self.solver.snapshot()
        except RuntimeError as e:   # Caffe's write failed (patch 0013):
            # another process took the room just released; the earlier
            # snapshot stays the last good one
            for path in (tmp_model, tmp_state):
                remove(path)
            why = re.search(r"cannot write \((.*)\)$", str(e))
            self.fail(os.path.dirname(model) or ".",
                      why[1] if why else str(e))
            return
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
        more = not self.stop and self.solver.iter < self.param.max_iter
        if more and not self.reserve():   # room for the next one, if any
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
