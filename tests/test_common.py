"""What every subcommand shares: outputs that cannot be written, or that
would replace a folder, and text files that are not UTF-8, all end in one
clear line with the old files kept."""
from conftest import assert_clean_error, jcdl, write_image
from jcdl import lmdbio, lmdbread


def small_db(tmp_path):
    root = tmp_path / "root"
    write_image(root / "a.png", 8, 8, seed=1)
    write_image(root / "b.png", 8, 8, seed=2)
    (tmp_path / "l.txt").write_text("a.png 1 0\nb.png 0 1\n")
    lmdbio.convert(root, tmp_path / "l.txt", tmp_path / "db", progress=False)
    return tmp_path / "db"


def test_file_outputs_never_replace_a_folder(tmp_path):
    """jcdl mean onto a folder (or onto its own input LMDB) is refused; the
    folder keeps its files."""
    db = small_db(tmp_path)
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for target in (folder, db):
        proc = jcdl("mean", db, target, check=False)
        assert_clean_error(proc, str(target), "is a folder")
    assert (folder / "keep.txt").read_text() == "mine"
    assert len(list(lmdbread.records(db))) == 2


def test_unwritable_outputs_are_one_line(tmp_path):
    """An output under a file, or where nothing can be made (/proc): one
    line naming the path, for every stage that writes."""
    db = small_db(tmp_path)
    (tmp_path / "afile").write_text("x")
    gt = tmp_path / "gt.txt"
    gt.write_text("a 1 0\nb 0 1\n")
    cases = [
        (["mean", db, tmp_path / "afile/m.binaryproto"], "afile is a file"),
        (["convert", tmp_path / "root", tmp_path / "l.txt",
          tmp_path / "afile/db"], "afile is a file"),
        (["netgen", "--out", tmp_path / "afile/net", "--arch", "small",
          "--crop", 8, "--train-db", db, "--test-db", db], "afile"),
        (["score", gt, gt, "--out", tmp_path / "afile/report"], "afile"),
        (["score", gt, gt, "--out", "/proc/jcdl-test/report"],
         "/proc/jcdl-test"),
    ]
    for args, fragment in cases:
        proc = jcdl(*args, check=False)
        assert_clean_error(proc, f"jcdl {args[0]}: ", fragment)
    assert (tmp_path / "afile").read_text() == "x"


def test_text_files_that_are_not_utf8(tmp_path):
    """A UTF-16 file (PowerShell's '>') is named as such, a Latin-1 classes
    file by its line; a UTF-8 BOM (Notepad) is dropped."""
    gt = tmp_path / "gt.txt"
    gt.write_text("a 1 0\nb 0 1\n")
    classes = tmp_path / "classes.txt"
    classes.write_bytes("joy\nfear\n".encode("utf-16"))
    proc = jcdl("score", gt, gt, "--classes", classes, check=False)
    assert_clean_error(proc, "classes.txt: not UTF-8 text (UTF-16 or "
                       "binary): save the classes file as UTF-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"joie\ncol\xe8re\n")
    proc = jcdl("score", gt, gt, "--classes", latin1, "--out",
                tmp_path / "r", check=False)
    assert_clean_error(proc, "latin1.txt:2: not UTF-8 text")
    assert not (tmp_path / "r").exists()
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + gt.read_bytes())
    classes.write_text("joie\ncolère\n")
    jcdl("score", bom, gt, "--classes", classes, "--out", tmp_path / "r")
    rows = (tmp_path / "r" / "confusion.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["joie", "colère"]
    assert rows[1:] == ["joie,1,0", "colère,0,1"]   # 'a' read without BOM
