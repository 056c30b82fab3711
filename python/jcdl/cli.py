"""The ``jcdl`` command: one subcommand per stage, each defined by its stage
module's ``register(subparsers)``; this file only dispatches and turns bad
input into one line on stderr. It imports nothing at the top but ``sys``:
the stage modules (numpy, OpenCV, Caffe: most of a start's time) are
imported inside ``main``, so a Ctrl-C at any moment of that is one line
too."""
import sys

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
    import argparse  # noqa: PLC0415
    import importlib  # noqa: PLC0415
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


def _name(argv):
    """'jcdl COMMAND' as the arguments name it, before they are parsed."""
    words = [a for a in argv if not a.startswith("-")]
    return f"jcdl {words[0]}" if words and words[0] in STAGES else "jcdl"


def main(argv=None):
    try:
        return _main(argv)
    except KeyboardInterrupt:   # at any moment, the imports included
        name = _name(sys.argv[1:] if argv is None else argv)
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _parser(hold):
    """build_parser(); with ``hold``, a Ctrl-C meanwhile is held until the
    stage modules are imported, then raised (an interrupt inside an
    extension's import can come out as an ImportError: numpy's does)."""
    import signal  # noqa: PLC0415
    held = []
    if hold and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda *_: held.append(True))
    else:
        hold = False    # ignored (a background job) or a caller's own
    try:
        return build_parser()
    finally:
        if hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if held:
            raise KeyboardInterrupt


def _main(argv):
    import signal  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    from .errors import JcdlError  # noqa: PLC0415
    args = _parser(argv is None).parse_args(argv)
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
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
