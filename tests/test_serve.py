"""jcdl serve: the real command on a free local port over a small net trained
here (netgen --arch small, a short jcdl train), driven through real sockets
and Debian's headless chromium (chromedriver, W3C WebDriver), every answer
checked against `jcdl predict` on the same files."""
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import (BIN, ROOT, assert_clean_error, default_signals, jcdl,
                      png_claiming, strict_json, write_image)

sys.path.insert(0, str(ROOT / "tools"))
from webdriver import Browser  # noqa: E402

CLASSES = ["amusement", "contentment", "fear", "sadness"]
K = len(CLASSES)
SIZE = 40                  # stored images and the mean; the net crops 32
COLORS = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (180, 180, 40)]


# ------------------------------------------------------------ the net

@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A small net trained briefly on 4-emotion images: deploy, weights,
    mean, classes, and image files to predict (PNG and JPEG, stored size
    and others, which predict resizes)."""
    d = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(32):
        c = i % K
        p = 0.4 * rng.dirichlet(np.ones(K))
        p[c] += 0.6
        write_image(d / f"root/t{i}.png", SIZE, SIZE, seed=i, color=COLORS[c])
        lines.append(f"t{i}.png " + " ".join(f"{v:.6f}" for v in p))
    (d / "train.txt").write_text("\n".join(lines[:24]) + "\n")
    (d / "test.txt").write_text("\n".join(lines[24:]) + "\n")
    for part in ("train", "test"):
        jcdl("convert", d / "root", d / f"{part}.txt", d / f"{part}_lmdb")
    jcdl("mean", d / "train_lmdb", d / "mean.binaryproto")
    jcdl("netgen", "--out", d / "net", "--arch", "small", "--classes", K,
         "--train-db", d / "train_lmdb", "--test-db", d / "test_lmdb",
         "--mean", d / "mean.binaryproto", "--batch", 8, "--test-batch", 8,
         "--base-lr", 0.01, "--max-iter", 12, "--test-interval", 12,
         "--snapshot", 12, "--display", 4, "--seed", 1)
    weights = jcdl("train", "--solver", d / "net/solver.prototxt",
                   cwd=d).stdout.strip().splitlines()[-1]
    (d / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    imgs = d / "imgs"
    files = []
    for i, (w, h, ext) in enumerate([(40, 40, "png"), (64, 48, "jpg"),
                                     (40, 40, "jpg"), (23, 57, "png"),
                                     (300, 200, "png"), (40, 40, "bmp")]):
        write_image(imgs / f"img{i}.{ext}", w, h, seed=50 + i,
                    color=COLORS[i % K])
        files.append(imgs / f"img{i}.{ext}")
    return dict(dir=d, model=d / "net/deploy.prototxt",
                weights=(d / weights) if not os.path.isabs(weights)
                else Path(weights),
                mean=d / "mean.binaryproto", classes=d / "classes.txt",
                imgs=imgs, files=files)


def net_args(net):
    return ["--model", net["model"], "--weights", net["weights"],
            "--mean", net["mean"], "--classes", net["classes"]]


def predict_cli(net, files, batch=32):
    """`jcdl predict`'s records for files (named relative to their folder,
    as the API names uploads)."""
    out = jcdl("predict", *net_args(net), "--batch", batch,
               *[Path(f).name for f in files], cwd=Path(files[0]).parent)
    return [json.loads(line) for line in out.stdout.splitlines()]


# ------------------------------------------------------------ the server

class Server:
    """`jcdl serve` on a free port (--port 0; the URL it prints), its
    stderr collected by a thread."""

    def __init__(self, net, *extra, cwd, env=None):
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("GLOG_minloglevel", None)
        self.proc = subprocess.Popen(
            [str(BIN / "jcdl"), "serve", *map(str, net_args(net)),
             "--port", "0", *map(str, extra)],
            cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=default_signals)
        self.lines, self.urls = [], queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.url = self.urls.get(timeout=120)
        except queue.Empty:
            self.proc.kill()
            pytest.fail("jcdl serve printed no URL:\n" + self.stderr)
        if self.url is None:
            pytest.fail(f"jcdl serve exited {self.proc.wait()}:\n"
                        + self.stderr)
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", self.url)
        assert m, self.url
        self.port = int(m.group(1))

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r" on (http://\S+)", line)
            if m and line.startswith("jcdl serve: serving"):
                self.urls.put(m.group(1))
        self.urls.put(None)

    @property
    def stderr(self):
        return "".join(self.lines)

    def stop(self, sig=signal.SIGINT):
        """Sends Ctrl-C; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("jcdl serve did not stop on " + sig.name)
        self.reader.join(10)
        return rc

    # -- HTTP, with the standard library on real sockets
    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None):
        status, headers, data = self.request(method, path, body, headers)
        assert headers.get("Content-Type", "").startswith(
            "application/json"), (status, headers, data[:200])
        return status, strict_json(data)

    def upload(self, parts, field="image"):
        """POST /api/predict with (filename, bytes) parts in a multipart
        form; returns (status, JSON)."""
        body, ctype = multipart(parts, field)
        return self.json("POST", "/api/predict", body,
                         {"Content-Type": ctype})


def multipart(parts, field="image"):
    """A multipart/form-data body of (filename, bytes[, field]) parts; a
    filename given as bytes is sent as those bytes."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        name, data = part[:2]
        fld = part[2] if len(part) > 2 else field
        name = name if isinstance(name, bytes) else name.encode()
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{fld}";'
            f' filename="'.encode() + name + b'"\r\nContent-Type: '
            b'application/octet-stream\r\n\r\n' + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(net, tmp_path_factory):
    """One server for the module, in an empty folder with an empty TMPDIR
    (both must stay empty: nothing is written to disk); Ctrl-C at the end
    must stop it with status 0."""
    cwd = tmp_path_factory.mktemp("serve_cwd")
    tmp = tmp_path_factory.mktemp("serve_tmp")
    s = Server(net, "--max-size", "2M", "--max-files", 4, cwd=cwd,
               env={"TMPDIR": str(tmp)})
    s.cwd, s.tmp = cwd, tmp
    yield s
    rc = s.stop()
    assert rc == 0, s.stderr
    assert s.stderr.rstrip().splitlines()[-1] == "jcdl serve: stopped"
    assert "Traceback" not in s.stderr, s.stderr
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []


def read(path):
    return Path(path).read_bytes()


# ------------------------------------------------------------ the API

def test_info(server, net):
    status, info = server.json("GET", "/api/info")
    assert status == 200
    assert info["classes"] == CLASSES and info["k"] == K
    assert Path(info["model"]).resolve() == net["model"].resolve()
    assert Path(info["weights"]).resolve() == net["weights"].resolve()
    assert info["limits"]["max_size"] == 2 * 2 ** 20
    assert info["limits"]["max_files"] == 4


def test_predict_equals_jcdl_predict(server, net):
    """Several images in one request: the records `jcdl predict` prints for
    the same files, equal to the last bit."""
    files = net["files"][:4]
    status, records = server.upload([(f.name, read(f)) for f in files])
    assert status == 200, records
    want = predict_cli(net, files)
    assert records == want
    assert [r["image"] for r in records] == [f.name for f in files]
    for r in records:
        assert list(r["distribution"]) == CLASSES
        q = np.array(list(r["distribution"].values()))
        assert abs(q.sum() - 1) < 1e-5
        assert r["dominant"] == CLASSES[int(np.argmax(q))]
    # one image alone: predict's record for it alone
    f = net["files"][4]
    status, records = server.upload([(f.name, read(f))])
    assert status == 200 and records == predict_cli(net, [f])


def test_a_large_upload_is_not_written_to_disk(server, net, tmp_path):
    """A 1.5 MB PNG (werkzeug spools files over 500 KB to a temporary file
    unless told not to): predicted, and TMPDIR stays empty."""
    big = tmp_path / "noise.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(big), rng.integers(0, 256, (720, 720, 3), np.uint8))
    assert 1_000_000 < big.stat().st_size < 2 * 2 ** 20
    status, records = server.upload([(big.name, read(big))])
    assert status == 200, records
    assert records == predict_cli(net, [big])
    assert list(server.tmp.iterdir()) == []
    assert list(server.cwd.iterdir()) == []


def bad_uploads(net):
    png = read(net["files"][0])
    body, ctype = multipart([("a.png", png)])
    return [
        # (what, method, path, body, headers, status, fragments of error)
        ("not an image", "POST", "/api/predict",
         *multipart([("notes.png", b"these are words, not pixels")]),
         400, ["notes.png", "not an image"]),
        ("a truncated image", "POST", "/api/predict",
         *multipart([("cut.png", png[:60])]), 400,
         ["cut.png", "not an image"]),
        ("an empty file", "POST", "/api/predict",
         *multipart([("empty.jpg", b"")]), 400, ["empty.jpg", "empty"]),
        ("too large", "POST", "/api/predict",
         *multipart([("huge.png", png + b"\0" * (2 * 2 ** 20))]), 413,
         ["huge.png", "too large", "--max-size"]),
        ("the request too large", "POST", "/api/predict",
         *multipart([("x.png", b"\0" * (3 * 2 ** 20))] * 4), 413,
         ["too large", "--max-files", "--max-size"]),
        ("too many files", "POST", "/api/predict",
         *multipart([(f"f{i}.png", png) for i in range(5)]), 400,
         ["too many files", "5", "at most 4"]),
        ("no file", "POST", "/api/predict", *multipart([]), 400,
         ["no file", "'image'"]),
        ("another field", "POST", "/api/predict",
         *multipart([("a.png", png, "picture")]), 400,
         ["no file", "'picture'"]),
        ("not multipart", "POST", "/api/predict", b'{"image": 1}',
         "application/json", 415, ["not a multipart upload"]),
        ("GET on the API", "GET", "/api/predict", None, None, 405,
         ["GET is not allowed", "POST"]),
        ("no such page", "GET", "/nothing", None, None, 404,
         ["no such page", "/nothing"]),
        ("a header claiming 60000 x 60000 pixels", "POST", "/api/predict",
         *multipart([("bomb.png", png_claiming(60000, 60000))]), 413,
         ["bomb.png", "too large", "hundreds of millions", "--max-pixels"]),
        ("a part without its Content-Disposition", "POST", "/api/predict",
         b"--x\r\nContent-Type: image/png\r\n\r\n" + png + b"\r\n--x--\r\n",
         "multipart/form-data; boundary=x", 400,
         ["not a valid multipart form", "Content-Disposition"]),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_requests_get_a_4xx_json_error(server, net, case):
    what, method, path, body, ctype, status, fragments = \
        bad_uploads(net)[case]
    headers = {"Content-Type": ctype} if ctype else {}
    got, answer = server.json(method, path, body, headers)
    assert got == status, (what, answer)
    assert set(answer) <= {"error", "image"}, answer
    for f in fragments:
        assert f in answer["error"], (what, f, answer)
    # and the server goes on serving
    f = net["files"][2]
    ok, records = server.upload([(f.name, read(f))])
    assert ok == 200 and records[0]["image"] == f.name


def test_a_latin1_file_name_is_accepted(server, net, tmp_path):
    """An upload whose file name is Latin-1 bytes (curl sends a local name
    as it is): predicted, its record the one `jcdl predict` prints for a
    file of that name ("image" valid Unicode, "image_bytes" the bytes); a
    bad one is named the same way in its error."""
    latin1 = b"caf\xe9.png"
    same = tmp_path / os.fsdecode(latin1)
    same.write_bytes(read(net["files"][0]))
    status, records = server.upload([(latin1, read(same))])
    assert status == 200, records
    assert records == predict_cli(net, [same])
    assert records[0]["image"] == "caf\ufffd.png"
    assert bytes.fromhex(records[0]["image_bytes"]) == latin1
    status, answer = server.upload([(latin1, b"not pixels")])
    assert status == 400 and answer["image"] == "caf\ufffd.png", answer
    assert bytes.fromhex(answer["image_bytes"]) == latin1
    assert answer["error"].startswith("caf\ufffd.png: not an image")


def raw_exchange(port, data, timeout=30, end=False):
    """Sends bytes on a real socket (with ``end``, then ends its sending
    side) and reads until the server closes it: (the whole answer, seconds
    until closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t = time.time()
        s.sendall(data)
        if end:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer, time.time() - t


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
])
def test_malformed_http_gets_the_json_error(server, net, data, status):
    """What the HTTP server refuses before the API sees it (a bad request
    line, a version it does not speak, a line or headers too long): the
    API's JSON error shape, not an HTML page; serving goes on."""
    answer, _ = raw_exchange(server.port, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert re.match(rf"HTTP/1\.[01] {status} ", lines[0]), lines[0]
    assert "Content-Type: application/json" in lines, lines
    error = strict_json(body)
    assert list(error) == ["error"] and error["error"].startswith(
        f"{status} "), error
    f = net["files"][2]
    ok, records = server.upload([(f.name, read(f))])
    assert ok == 200 and records[0]["image"] == f.name


def test_a_bad_content_length_and_a_latin1_field_are_named(server, net):
    """A Content-Length that is not a number of bytes says so (not a
    parser's state); a field named in Latin-1 bytes shows as Unicode in the
    'no file' hint, not as Python's escape of a lone surrogate."""
    png = read(net["files"][0])
    body = (b"--x\r\nContent-Disposition: form-data; name=\"image\"; "
            b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + png +
            b"\r\n--x--\r\n")
    for given in (b"abc", b"-5"):
        answer, _ = raw_exchange(server.port, (
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: " + given + b"\r\n\r\n" + body), end=True)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
        error = strict_json(rest)["error"]
        assert error == (f"Content-Length {given.decode()!r} is not a "
                         f"number of bytes"), error
    latin1 = body.replace(b'name="image"', b'name="im\xe9ge"')
    status, answer = server.json(
        "POST", "/api/predict", latin1,
        {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400, answer
    assert "(the form has 'im\ufffdge')" in answer["error"], answer
    assert "\\u" not in answer["error"] and "\\x" not in answer["error"]


def test_a_stalled_client_is_dropped_after_the_timeout(net, tmp_path):
    """--timeout 1: a client that sends half its request line or its
    headers and stalls is disconnected after about a second (its thread
    freed); one that stalls in its body gets a 408 JSON error first, one
    whose body ends early a 400. The server goes on serving."""
    s = Server(net, "--timeout", 1, cwd=tmp_path)
    try:
        f = net["files"][0]
        body, ctype = multipart([(f.name, read(f))])
        for half in (b"POST /api/pre",
                     b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"):
            answer, took = raw_exchange(s.port, half)
            assert answer == b"" and 0.5 < took < 10, (half, took)
        half = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                + ctype.encode() + b"\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body[:len(body) // 2])
        for end, status, said in (
                (False, 408, "the request stalled: no data for --timeout"),
                (True, 400, "the request ended early")):
            answer, took = raw_exchange(s.port, half, end=end)
            assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:300]
            assert took < 10 and (end or took > 0.5), took
            error = strict_json(answer.partition(b"\r\n\r\n")[2])
            assert error["error"].startswith(said), error
        ok, records = s.upload([(f.name, read(f))])
        assert ok == 200 and records == predict_cli(net, [f])
    finally:
        rc = s.stop()
    assert rc == 0 and "Traceback" not in s.stderr, s.stderr
    assert s.stderr.count("Request timed out") == 2, s.stderr


def test_a_burst_of_concurrent_requests(server, net):
    """96 requests from 16 threads at once: single images, groups of three
    (the net reshaped between batch sizes) and bad files. Each answer is
    the one for its own upload: `jcdl predict`'s records for the same
    files in the same batch, or the error naming the bad file."""
    files = net["files"]
    groups = [files[:3], files[3:]]
    want = {(f.name,): [r] for f, r in
            zip(files, predict_cli(net, files, batch=1))}
    for g in groups:
        want[tuple(f.name for f in g)] = predict_cli(net, g)
    kinds = [[f] for f in files] + groups + [None]
    jobs = []
    for i in range(96):
        kind = kinds[i % len(kinds)]
        jobs.append([(f"bad{i}.jpg", b"GIF89a but not really")]
                    if kind is None else [(f.name, read(f)) for f in kind])

    def send(parts):
        return tuple(name for name, _ in parts), server.upload(parts)

    t = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, jobs))
    assert time.monotonic() - t < 120
    assert len(answers) == 96
    for names, (status, answer) in answers:
        if names[0].startswith("bad"):
            assert status == 400 and answer["image"] == names[0], answer
        else:
            assert status == 200 and answer == want[names], (names, answer)


# ------------------------------------------------------------ the page

def card_values(browser, name):
    """The chart of one card as the page shows it: per bar its class, the
    number it holds, the percentage written and the bar's width."""
    return browser.script("""
        const card = [...document.querySelectorAll('.card')]
            .find(c => c.dataset.image === arguments[0]);
        return [...card.querySelectorAll('.chart .bar')].map(b => ({
            cls: b.querySelector('.label').textContent,
            p: b.dataset.p, text: b.querySelector('.value').textContent,
            width: b.querySelector('.fill').getBoundingClientRect().width,
            track: b.querySelector('.track').getBoundingClientRect().width,
            top: b.classList.contains('top')}));""", name)


def wait_done(browser, n):
    return browser.wait("""
        const cards = document.querySelectorAll('.card');
        return cards.length === arguments[0] &&
            [...cards].every(c => c.dataset.state !== 'pending') &&
            [...cards].map(c => [c.dataset.image, c.dataset.state,
                                 c.dataset.dominant || null,
                                 c.textContent]);""", 60, n)


@pytest.fixture(scope="module")
def browser():
    with Browser(1200, 900) as b:
        yield b


def test_page_shows_the_predictions_of_jcdl_predict(server, net, browser,
                                                    tmp_path):
    browser.get(server.url)
    browser.wait("return document.querySelector('#model').textContent"
                 ".includes('4 emotions')")
    header = browser.script("return document.querySelector('#model')"
                            ".textContent")
    assert all(c in header for c in CLASSES), header
    # choose two images and a file that is no image through the file input
    bad = tmp_path / "readme.png"
    bad.write_text("not an image")
    chosen = [net["files"][1], net["files"][3], bad]
    browser.find("#files").send_keys("\n".join(str(f) for f in chosen))
    cards = wait_done(browser, 3)
    by_name = {c[0]: c for c in cards}
    assert by_name["readme.png"][1] == "error"
    assert "not an image" in by_name["readme.png"][3]
    for f in chosen[:2]:
        want = predict_cli(net, [f])[0]   # the page sends one per request
        assert by_name[f.name][1] == "done"
        assert by_name[f.name][2] == want["dominant"]
        assert f"Dominant emotion: {want['dominant']}" in by_name[f.name][3]
        bars = card_values(browser, f.name)
        assert [b["cls"] for b in bars] == CLASSES
        for b in bars:
            p = want["distribution"][b["cls"]]
            assert float(b["p"]) == p                 # the number, exactly
            assert b["text"] == f"{100 * p:.1f}%"
            assert abs(b["width"] - p * b["track"]) < 1.5, b
            assert b["top"] == (b["cls"] == want["dominant"])
    # the images are shown
    shown = browser.script("""return [...document.querySelectorAll('.card img')]
        .map(i => [i.alt, i.complete && i.naturalWidth])""")
    assert sorted(shown) == sorted([[chosen[0].name, 64],
                                    [chosen[1].name, 23]])
    # nothing was loaded from anywhere but this server (and blob: previews)
    origins = browser.script("""return performance.getEntriesByType('resource')
        .map(e => new URL(e.name).origin)""")
    assert set(origins) <= {server.url.rstrip("/")}, origins


def test_page_takes_a_drop(server, net, browser):
    """A file dropped on the page (a real drop event with a DataTransfer
    holding the file's bytes) is predicted like a chosen one."""
    f = net["files"][5]
    browser.get(server.url)
    browser.wait("return document.querySelector('#model').textContent"
                 ".includes('emotions')")
    data = list(read(f))
    browser.script("""
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(arguments[0])], arguments[1],
                              {type: 'image/bmp'}));
        document.querySelector('#drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                   cancelable: true}));""", data, f.name)
    wait_done(browser, 1)
    want = predict_cli(net, [f])[0]
    bars = card_values(browser, f.name)
    assert {b["cls"]: float(b["p"]) for b in bars} == want["distribution"]


def test_page_fits_a_narrow_screen(server, net, browser):
    """On a phone-wide viewport nothing overflows sideways and the chart's
    labels, bars and values stay inside their card."""
    browser.cdp("Emulation.setDeviceMetricsOverride",
                width=360, height=740, deviceScaleFactor=2, mobile=True)
    try:
        browser.get(server.url)
        browser.wait("return document.querySelector('#model').textContent"
                     ".includes('emotions')")
        browser.find("#files").send_keys(str(net["files"][4]))
        wait_done(browser, 1)
        layout = browser.script("""
            const de = document.documentElement;
            const card = document.querySelector('.card').getBoundingClientRect();
            const parts = [...document.querySelectorAll(
                '.bar .label, .bar .track, .bar .value')]
                .map(e => e.getBoundingClientRect());
            return {vw: innerWidth, scroll: de.scrollWidth,
                    client: de.clientWidth, cardL: card.left,
                    cardR: card.right,
                    minL: Math.min(...parts.map(r => r.left)),
                    maxR: Math.max(...parts.map(r => r.right)),
                    minW: Math.min(...parts.map(r => r.width))};""")
        assert layout["vw"] == 360, layout
        assert layout["scroll"] <= layout["client"], layout
        assert 0 <= layout["cardL"] and layout["cardR"] <= 360, layout
        assert layout["cardL"] <= layout["minL"], layout
        assert layout["maxR"] <= layout["cardR"], layout
        assert layout["minW"] > 10, layout
    finally:
        browser.cdp("Emulation.clearDeviceMetricsOverride")


# ------------------------------------------------------------ start, stop

def test_bad_start_is_one_clean_line(net, tmp_path):
    proc = jcdl("serve", *net_args(net)[:2], "--weights",
                tmp_path / "none.caffemodel", "--classes", net["classes"],
                "--port", 0, check=False, timeout=60)
    assert_clean_error(proc, "none.caffemodel", "no such weights file")
    wrong = tmp_path / "classes.txt"
    wrong.write_text("one\ntwo\n")
    proc = jcdl("serve", "--model", net["model"], "--weights",
                net["weights"], "--mean", net["mean"], "--classes", wrong,
                "--port", 0, check=False, timeout=60)
    assert_clean_error(proc, "classes.txt")


def test_a_busy_port_is_named_and_sigterm_stops(net, tmp_path):
    first = Server(net, cwd=tmp_path)
    try:
        proc = jcdl("serve", *net_args(net), "--port", first.port,
                    check=False, timeout=60)
        assert_clean_error(proc, f"127.0.0.1:{first.port}", "cannot listen")
        status, info = first.json("GET", "/api/info")   # still serving
        assert status == 200 and info["k"] == K
    finally:
        rc = first.stop(signal.SIGTERM)
    assert rc == 0, first.stderr
    assert first.stderr.rstrip().endswith("jcdl serve: stopped")
