"""Reading and writing files safely: outputs appear whole or not at all
(atomic_output, output_folder), outputs never land on inputs, and text files
are read as UTF-8 with one clear line for anything else."""
import errno
import fcntl
import os
import re
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import JcdlError


def remove(path):
    """Removes a file or a folder tree, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# an output's name, so that .NAME.partial-PID (and .NAME.lock) fit in 255
MAX_NAME = 255 - len("." + ".partial-") - 10


def output_path(path):
    """An output's path: a symbolic link stands for where it points; '.',
    '..' and '' name no file or folder to write."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.name in ("", ".", ".."):
        raise JcdlError(path, "name the output: a file or folder name, not "
                        "'.' or '..'")
    n = len(os.fsencode(path.name))
    if n > MAX_NAME:
        raise JcdlError(path, f"the name is {n} bytes long, at most "
                        f"{MAX_NAME}: the file system takes 255 and the "
                        "temporary written beside it (.NAME.partial-PID) "
                        "needs the rest")
    return path


def make_folder_for(path):
    """Makes the folder an output goes in, or says what is in the way."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents)
                        if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker else e.strerror
        raise JcdlError(path, f"cannot make its folder {folder} ({why})") \
            from None


@contextmanager
def folder_for(path):
    """make_folder_for, for a block: when the block fails, the folders it
    made are removed again (those left empty), so a failed run leaves no
    new folder behind."""
    folder = Path(path).parent
    made = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        make_folder_for(path)
        yield
    except BaseException:
        for p in made:   # the deepest first
            try:
                os.rmdir(p)
            except OSError:
                break    # not empty (or not ours): it and those above stay
        raise


# errors of a write that name no file (a full disk while a file is written)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
_claims = {}  # lock file -> how many claims of this process hold it


def pid_alive(pid):
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_file(path):
    """The lock file of an output: ``.NAME.lock`` beside it (the C++
    convert_imageset_r takes the same one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def claim(path):
    """Holds, for the block, the exclusive claim to write the output
    ``path``: an flock on its lock file (see lock_file), which the kernel
    releases when the process ends, however it ends, so a lock file left by
    a killed run is simply taken over. A second writer is refused in one
    line naming the first's PID. Claims nest within one process. The
    folders made for ``path`` are removed again when the block fails."""
    path = output_path(path)
    with folder_for(path), _flock(path):
        yield


@contextmanager
def _flock(path):
    """claim()'s flock on the lock file of ``path``, whose folder exists."""
    lock = lock_file(path)
    key = os.path.realpath(lock)
    if key in _claims:
        _claims[key] += 1
        try:
            yield
        finally:
            _claims[key] -= 1
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            if not path.is_dir() or lock.parent == path:
                raise JcdlError(path, "cannot write (Permission denied)") \
                    from None
            lock = path / ".jcdl.lock"  # an existing folder, written into
            continue
        except OSError as e:
            raise JcdlError(path, f"cannot write ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (PID {holder})" if holder.isdigit() else ""
            raise JcdlError(path, f"another process{who} is writing it now: "
                            "wait for it to finish, or write elsewhere") \
                from None
        try:   # its last holder may have removed it meanwhile: lock anew
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds without the PID in it
        pass
    _claims[key] = 1
    try:
        yield
    finally:
        del _claims[key]
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


@contextmanager
def claim_outputs(*paths):
    """claim() of each output given (None skipped), for a whole command: a
    second run writing one of them is refused before any work."""
    with ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.enter_context(claim(path))
        yield


_STALE = re.compile(r"\.(.+)\.(partial|old)-(\d+)")


def remove_stale(path):
    """Cleans up after writers of ``path``'s folder that were killed: the
    ``.NAME.partial-PID`` temporaries of processes that are gone (and whose
    output nobody is writing now) are removed; a ``.NAME.old-PID`` (an
    earlier output set aside for a moment while a folder was replaced) goes
    back to NAME when NAME is missing, and is removed when NAME is there."""
    folder = Path(path).parent
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _STALE.fullmatch(entry.name)
        if not m or int(m.group(3)) == os.getpid() or \
                pid_alive(int(m.group(3))):
            continue
        target = entry.with_name(m.group(1))
        try:
            with claim(target):
                if m.group(2) == "partial":
                    remove(entry)
                elif not os.path.lexists(target):
                    os.replace(entry, target)
                else:
                    remove(entry)
        except (JcdlError, OSError):
            pass   # being written by another process now, or not ours


def _write_error(e, tmp):
    """Whether an OSError is one of writing ``tmp`` (or a file in it)."""
    if e.filename is not None:
        return str(tmp) in str(e.filename)
    return e.errno in WRITE_ERRNOS


@contextmanager
def atomic_output(path, new=False):
    """Yields a temporary path beside ``path`` to write a file or folder into;
    renames it to ``path`` when the block completes and removes it when the
    block fails, so ``path`` is either complete or untouched. The folder
    ``path`` goes in is made if needed. A folder at ``path`` is replaced only
    by a folder (the caller has checked it is its own output), never by a
    file; errors about the temporary name (a full disk) are reported about
    ``path``. The block holds the claim on ``path`` (another process writing
    it is refused; the folders made for it are removed again on failure);
    with ``new``, a ``path`` that exists is refused, once claimed. Stale
    temporaries of killed writers are cleaned up first."""
    path = output_path(path)
    with claim(path):
        if new and os.path.lexists(path):
            raise JcdlError(path, "already exists; remove it or choose "
                            "another name")
        remove_stale(path)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        remove(tmp)
        try:
            yield tmp
            if path.is_dir() and not path.is_symlink():
                if not tmp.is_dir():
                    raise JcdlError(path, "is a folder: give a file name")
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                remove(old)
            else:
                os.replace(tmp, path)
        except OSError as e:
            remove(tmp)
            if _write_error(e, tmp):
                raise JcdlError(path, f"cannot write ({e.strerror})") \
                    from None
            raise
        except JcdlError as e:   # a file inside: named as it will be
            remove(tmp)
            if e.path.startswith(str(tmp)):
                e.path = str(path) + e.path[len(str(tmp)):]
            raise
        except BaseException:
            remove(tmp)
            raise


@contextmanager
def output_folder(path):
    """Yields a temporary folder for an output folder's files. When the
    block completes they go to ``path``: a new folder is renamed whole; in
    an existing one they replace the files of the same names and nothing
    else is touched ('.' is the current folder). When it fails, nothing at
    ``path`` has changed."""
    if Path(path).is_dir():
        path = Path(os.path.realpath(path))
    path = output_path(path)
    if path.exists() and not path.is_dir():
        raise JcdlError(path, "exists and is not a folder")
    if not path.is_dir():
        with atomic_output(path) as tmp:
            yield tmp
        return
    with claim(path):
        for stale in path.glob(".jcdl-new-*"):   # of killed runs
            pid = stale.name.rsplit("-", 1)[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                remove(stale)
        tmp = path / f".jcdl-new-{os.getpid()}"
        remove(tmp)
        try:
            tmp.mkdir()
            yield tmp
            for item in sorted(tmp.iterdir()):
                os.replace(item, path / item.name)
        except OSError as e:
            if _write_error(e, tmp):
                raise JcdlError(path, f"cannot write ({e.strerror})") \
                    from None
            raise
        except JcdlError as e:
            if e.path.startswith(str(tmp)):
                e.path = str(path) + e.path[len(str(tmp)):]
            raise
        finally:
            remove(tmp)


def check_output_file(path, *inputs):
    """Refuses, before any work, an output file that is a folder or is one
    of the run's inputs (None inputs are skipped)."""
    path = Path(path)
    if path.is_dir():
        raise JcdlError(path, "is a folder: give a file name")
    for given in inputs:
        if given is not None and path.exists() and Path(given).exists() \
                and os.path.samefile(path, given):
            raise JcdlError(path, f"is an input of this run ({given}): "
                            "write the output elsewhere")
    check_not_inside(path, inputs)


def check_not_inside(path, inputs):
    """Refuses an output at or inside a folder the run reads (an LMDB, an
    image root, a run folder): writing there can destroy what it reads."""
    real = Path(os.path.realpath(path))
    for given in inputs:
        if given is None or not Path(given).is_dir():
            continue
        folder = Path(os.path.realpath(given))
        if real == folder or folder in real.parents:
            where = "is" if real == folder else "is inside"
            raise JcdlError(path, f"{where} {given}, a folder this run "
                            "reads: write the output elsewhere")


def check_output_dir(path, names, *inputs):
    """Refuses, before any work, an output folder that is (or lies inside)
    a folder the run reads, or whose files ``names`` would replace one of
    the run's inputs (None inputs are skipped)."""
    check_not_inside(path, inputs)
    for name in names:
        check_output_file(Path(path) / name, *inputs)


def text_bytes(data, path, what="file"):
    """The bytes of a text file without a UTF-8 byte-order mark; a UTF-16
    file or one with NUL bytes is refused (convert_imageset_r says the
    same)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in data:
        raise JcdlError(path, f"not UTF-8 text (UTF-16 or binary): save the "
                        f"{what} as UTF-8")
    return data.removeprefix(b"\xef\xbb\xbf")


def read_text(path, what="file", names_only=False):
    """The text of a UTF-8 file (see text_bytes). Bytes that are not UTF-8
    become surrogates, as in file names; with ``names_only`` (names that
    are written out again) they are an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, f"no such {what}")
    try:
        data = text_bytes(path.read_bytes(), path, what)
    except OSError as e:
        raise JcdlError(path, f"cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8", errors="strict" if names_only
                           else "surrogateescape")
    except UnicodeDecodeError as e:
        raise JcdlError(path, f"not UTF-8 text: save the {what} as UTF-8",
                        data[:e.start].count(b"\n") + 1) from None


def write_text(path, text):
    """Writes a text file atomically."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


@contextmanager
def quiet_opencv():
    """OpenCV's own warnings (a bad image) off: our one line says it."""
    import cv2  # noqa: PLC0415
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_lines(path, what="file"):
    """(line number, tokens, ends with a newline) of each non-blank line of a
    text file (any whitespace separates)."""
    pieces = read_text(path, what).split("\n")
    return [(i + 1, piece.split(), i < len(pieces) - 1)
            for i, piece in enumerate(pieces) if piece.split()]
