"""The ``jcdl`` command: one subcommand per stage, each defined by its stage
module's ``register(subparsers)``; this file only dispatches and turns bad
input into one line on stderr."""
import argparse
import importlib
import signal
import sys
import traceback

from .errors import JcdlError

# subcommand -> module that defines it
STAGES = {
    "prepare": "datasets",
    "convert": "lmdbio",
    "mean": "lmdbio",
    "netgen": "netgen",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "score": "metrics",
    "plot": "plot",
    "demo": "demo",
    "reproduce": "reproduce",
    "serve": "serve",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="jcdl",
        description="JCDL on Caffe: dataset -> lists -> LMDB -> prototxt -> "
                    "training -> evaluation -> prediction -> plots.")
    parser.add_argument("--debug", action="store_true",
                        help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in dict.fromkeys(STAGES.values()):
        importlib.import_module(f"jcdl.{module}").register(sub)
    return parser


class _Tolerant:
    """A standard stream whose terminal or pipe may go away (a closed
    terminal, a reader that quit): writing to it then does nothing instead
    of raising in the middle of a snapshot or a cleanup."""

    def __init__(self, stream):
        self._stream, self._dead = stream, False

    def write(self, text):
        if not self._dead:
            try:
                return self._stream.write(text)
            except OSError:
                self._dead = True
        return len(text)

    def flush(self):
        if not self._dead:
            try:
                self._stream.flush()
            except OSError:
                self._dead = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # names that are not UTF-8: as
        if hasattr(stream, "reconfigure"):   # their bytes, never a crash
            stream.reconfigure(errors="surrogateescape")
    if argv is None:   # the command itself, not a caller's main(argv)
        sys.stdout, sys.stderr = _Tolerant(sys.stdout), _Tolerant(sys.stderr)
        # SIGTERM and SIGHUP stop a command as Ctrl-C does (its partial
        # outputs removed); train, demo and serve set their own
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _interrupt)
    try:
        result = args.func(args)
    except JcdlError as e:
        if args.debug:
            traceback.print_exc()
        print(f"jcdl {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file the checks could not foresee
        if args.debug:
            traceback.print_exc()
        where = e.filename if e.filename is not None else "jcdl"
        print(f"jcdl {args.command}: {where}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jcdl {args.command}: interrupted", file=sys.stderr)
        return 130
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
