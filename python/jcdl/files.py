"""Reading and writing files safely: outputs appear whole or not at all
(atomic_output, output_folder), outputs never land on inputs, and text files
are read as UTF-8 with one clear line for anything else."""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import JcdlError


def remove(path):
    """Removes a file or a folder tree, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def output_path(path):
    """An output's path: a symbolic link stands for where it points; '.',
    '..' and '' name no file or folder to write."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.name in ("", ".", ".."):
        raise JcdlError(path, "name the output: a file or folder name, not "
                        "'.' or '..'")
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
def atomic_output(path):
    """Yields a temporary path beside ``path`` to write a file or folder into;
    renames it to ``path`` when the block completes and removes it when the
    block fails, so ``path`` is either complete or untouched. The folder
    ``path`` goes in is made if needed. A folder at ``path`` is replaced only
    by a folder (the caller has checked it is its own output), never by a
    file; errors about the temporary name are reported about ``path``."""
    path = output_path(path)
    make_folder_for(path)
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
        if e.filename is not None and str(tmp) in str(e.filename):
            raise JcdlError(path, f"cannot write ({e.strerror})") from None
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
    tmp = path / f".jcdl-new-{os.getpid()}"
    remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            os.replace(item, path / item.name)
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
