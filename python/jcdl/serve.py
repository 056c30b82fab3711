"""``jcdl serve``: a local web page over a trained net.

The net is loaded once with ``predict.load_model`` (the checks of ``jcdl
predict``) and served by werkzeug's threaded WSGI server:

- ``GET /``: the page (python/jcdl/static/serve.html, one self-contained
  file: no script, style, font or image from anywhere else, enforced by its
  Content-Security-Policy). Dropped or chosen images are sent one per
  request to the API and drawn as bar charts of their distribution;
- ``POST /api/predict``: multipart/form-data with one or more files in the
  field ``image``; answers the JSON array of the records ``jcdl predict``
  prints (``image`` is the uploaded file's name), all images of a request
  in one batch of ``--batch`` as ``jcdl predict`` does, so the numbers are
  the same;
- ``GET /api/info``: model, weights, classes, k and the limits.

A bad request gets a 4xx JSON ``{"error": "..."}`` naming what is wrong
(and ``"image"`` when one file is at fault), malformed HTTP included; the
server goes on. Uploads are parsed here (``multipart_parts``, with
werkzeug's decoder) and held in memory only, bounded by ``--max-size`` per
image and ``--max-files`` per request; a file name that is not UTF-8 is
kept as its bytes. A client that sends nothing for ``--timeout`` seconds
is dropped. Requests are parsed concurrently, and the net (not
thread-safe) is used under a lock, one request at a time.
Ctrl-C (or SIGTERM) stops the server, waits for a forward in progress and
exits 0.
"""
import io
import json
import os
import re
import signal
import socket
import sys
import threading
import traceback
import warnings
from importlib import resources

from .errors import JcdlError, int_arg
from .predict import name_fields, valid_unicode

FIELD = "image"
DEFAULT_MAX_SIZE = 16 * 2 ** 20      # bytes per image
DEFAULT_MAX_FILES = 16               # images per request
DEFAULT_MAX_PIXELS = 40_000_000      # width x height per image
PART_OVERHEAD = 16 * 1024            # multipart headers per file, at most
FORM_OVERHEAD = 64 * 1024            # other form fields, boundaries
FORM_MEMORY = 2 ** 20                # a text field / the parser's buffer
DRAIN_LIMIT = 256 * 2 ** 20          # a refused body read to its end
STOP_WAIT_S = 60                     # how long Ctrl-C waits for a forward
READ_TIMEOUT_S = 30                  # a client silent this long is dropped
READ_CHUNK = 64 * 1024               # the body is read this much at a time

CSP = ("default-src 'none'; script-src 'unsafe-inline'; "
       "style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def size_arg(text):
    """An argparse type: bytes, as 123, 500K, 16M or 1G (powers of 1024)."""
    import argparse  # noqa: PLC0415
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or a number with K, M or G)")
    scale = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30}
    return int(m.group(1)) * scale[m.group(2).lower()]


def human(n):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def page_html():
    return resources.files("jcdl").joinpath("static/serve.html") \
        .read_text(encoding="utf-8")


class ApiError(Exception):
    """A request the API refuses: HTTP status and the message for the
    JSON body (``image``: the uploaded file at fault, if one is)."""

    def __init__(self, status, message, image=None):
        super().__init__(message)
        self.status, self.message, self.image = status, message, image


def _image_pixels(data):
    """(width, height) from the image's header (PIL reads no pixels for
    it), "bomb" when it claims more pixels than PIL opens, or None when
    PIL does not know the format (OpenCV decides)."""
    from PIL import Image  # noqa: PLC0415
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:   # more than PIL will open
        return "bomb"
    except Exception:   # not an image PIL knows: left to OpenCV
        return None


class App:
    """The WSGI application over a loaded ``predict.Model``."""

    def __init__(self, model=None, max_size=DEFAULT_MAX_SIZE,
                 max_files=DEFAULT_MAX_FILES, max_pixels=DEFAULT_MAX_PIXELS,
                 batch=32):
        from werkzeug.routing import Map, Rule  # noqa: PLC0415
        self.model = model
        self.max_size, self.max_files = max_size, max_files
        self.max_pixels, self.batch = max_pixels, batch
        self.lock = threading.Lock()     # the net: one forward at a time
        self.page = page_html().encode("utf-8")
        self.urls = Map([
            Rule("/", endpoint="page", methods=["GET"]),
            Rule("/api/info", endpoint="info", methods=["GET"]),
            Rule("/api/predict", endpoint="predict", methods=["POST"]),
        ])

    @property
    def max_request(self):
        return self.max_files * (self.max_size + PART_OVERHEAD) + \
            FORM_OVERHEAD

    # ------------------------------------------------------------ WSGI
    def __call__(self, environ, start_response):
        from werkzeug.exceptions import HTTPException  # noqa: PLC0415
        request = self._request(environ)
        try:
            endpoint, _ = self.urls.bind_to_environ(environ).match()
            response = getattr(self, "on_" + endpoint)(request)
        except ApiError as e:
            body = {"error": valid_unicode(e.message)}
            if e.image is not None:
                body.update(name_fields(e.image))
            response = self._json(body, e.status)
        except HTTPException as e:   # 404, 405, 413 from werkzeug
            response = self._json({"error": _http_message(e, request)},
                                  e.code)
            if e.code == 405:
                response.headers["Allow"] = ", ".join(
                    e.valid_methods or ())
        except (ConnectionError, TimeoutError):
            raise    # a client gone or silent past --timeout: dropped
        except Exception as e:   # a bug: said in JSON, logged, serving on
            traceback.print_exc()
            response = self._json({"error": f"internal error: "
                                   f"{type(e).__name__}: {e}"}, 500)
        return response(environ, start_response)

    def _request(self, environ):
        from werkzeug.wrappers import Request  # noqa: PLC0415
        app = self

        class _Request(Request):
            max_content_length = app.max_request   # of request.stream

        return _Request(environ)

    @staticmethod
    def _json(obj, status=200):
        from werkzeug.wrappers import Response  # noqa: PLC0415
        response = Response(json.dumps(obj) + "\n", status=status,
                            mimetype="application/json")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # ------------------------------------------------------- endpoints
    def on_page(self, request):
        from werkzeug.wrappers import Response  # noqa: PLC0415
        response = Response(self.page, mimetype="text/html")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def info(self):
        m = self.model
        return {"model": str(m.model_path), "weights": str(m.weights_path),
                "classes": list(m.classes), "k": int(m.K),
                "limits": {"max_size": self.max_size,
                           "max_files": self.max_files,
                           "max_pixels": self.max_pixels,
                           "field": FIELD}}

    def on_info(self, request):
        return self._json(self.info())

    def on_predict(self, request):
        names, blobs = self._uploads(request)
        with self.lock:
            try:
                Q = self.model.predict(blobs, batch=self.batch, names=names)
            except JcdlError as e:
                if e.path not in names:    # the net's fault, not the upload's
                    raise ApiError(500, str(e)) from None
                what = ("not an image (cannot decode the image)"
                        if e.what == "cannot decode the image" else e.what)
                raise ApiError(400, f"{e.path}: {what}", e.path) from None
            records = self.model.records(names, Q)
        return self._json(records)

    # --------------------------------------------------------- uploads
    def _uploads(self, request):
        """(names, bytes) of the request's images, or ApiError."""
        from werkzeug.exceptions import (  # noqa: PLC0415
            ClientDisconnected, RequestEntityTooLarge)
        if request.mimetype != "multipart/form-data":
            raise ApiError(415, f"not a multipart upload "
                           f"({request.mimetype or 'no Content-Type'}): "
                           f"send the images as multipart/form-data in the "
                           f"field '{FIELD}'")
        given = request.headers.get("Content-Length")
        if given is not None and not given.strip().isdigit():
            raise ApiError(400, f"Content-Length {given!r} is not a number "
                           f"of bytes")
        length = request.content_length
        if length is not None and length > self.max_request:
            _drain(request.environ, length)
            raise ApiError(413, self._too_large_request(length))
        try:
            parts = multipart_parts(
                request.stream,
                request.mimetype_params.get("boundary", "").encode("latin-1"),
                self.max_files + 16)
        except RequestEntityTooLarge:
            if length is not None and length <= self.max_request:
                raise ApiError(413, f"too many parts in the form, or a text "
                               f"field too large: at most {self.max_files} "
                               f"files a request (--max-files)") from None
            raise ApiError(413, self._too_large_request(length)) from None
        except ValueError as e:
            raise ApiError(400, f"not a valid multipart form ({e}): send "
                           f"the images in the field '{FIELD}'") from None
        except ClientDisconnected as e:   # raised while reading it failed
            if isinstance(e.__context__, TimeoutError):
                raise ApiError(408, "the request stalled: no data for "
                               "--timeout seconds before its end") from None
            raise ApiError(400, "the request ended early (the client went "
                           "away, or its chunked encoding is broken)") \
                from None
        files = [(field, name, data) for field, name, data in parts
                 if name is not None]
        chosen = [(name, bytes(data)) for field, name, data in files
                  if field == FIELD and (name or data)]
        if not chosen:
            other = sorted({field for field, _, _ in files} - {FIELD})
            shown = (repr(valid_unicode(o)) for o in other)  # Latin-1 too
            hint = f" (the form has {', '.join(shown)})" if other else ""
            raise ApiError(400, f"no file: send one or more images in the "
                           f"multipart field '{FIELD}'{hint}")
        if len(chosen) > self.max_files:
            raise ApiError(400, f"too many files: {len(chosen)}, at most "
                           f"{self.max_files} a request (--max-files)")
        names, blobs = [], []
        for name, data in chosen:
            name = name or FIELD
            if not data:
                raise ApiError(400, f"{name}: empty file, not an image",
                               name)
            if len(data) > self.max_size:
                raise ApiError(413, f"{name}: too large: {human(len(data))}"
                               f", the limit is {human(self.max_size)} an "
                               f"image (--max-size)", name)
            size = _image_pixels(data)
            if size == "bomb":
                raise ApiError(413, f"{name}: too large: its header claims "
                               "hundreds of millions of pixels, the limit is "
                               f"{self.max_pixels} (--max-pixels)", name)
            if size and size[0] * size[1] > self.max_pixels:
                raise ApiError(413, f"{name}: too large: {size[0]}x{size[1]}"
                               f" pixels, the limit is {self.max_pixels} "
                               f"(--max-pixels)", name)
            names.append(name)
            blobs.append(data)
        return names, blobs

    def _too_large_request(self, length):
        what = f"{human(length)}" if length is not None else "the request"
        return (f"too large: {what}, the limit is {self.max_files} images "
                f"of at most {human(self.max_size)} (--max-files, "
                f"--max-size)")


def multipart_parts(stream, boundary, max_parts):
    """(field, file name or None for a text field, bytearray) of each part
    of a multipart/form-data body, read from ``stream`` with werkzeug's
    decoder. Part headers are read as UTF-8, and bytes that are not UTF-8
    (a file name in Latin-1, as curl sends an old archive's) as surrogates,
    where werkzeug's own parser drops the whole form. ValueError for a
    malformed body; RequestEntityTooLarge past ``max_parts`` parts or a
    text field past FORM_MEMORY."""
    from werkzeug.datastructures import Headers  # noqa: PLC0415
    from werkzeug.exceptions import RequestEntityTooLarge  # noqa: PLC0415
    from werkzeug.sansio import multipart  # noqa: PLC0415

    class Decoder(multipart.MultipartDecoder):
        def _parse_headers(self, data):
            data = multipart.HEADER_CONTINUATION_RE.sub(b" ", data)
            headers = []
            for line in data.splitlines():
                name, _, value = line.strip(b" \t").decode(
                    "utf-8", "surrogateescape").partition(":")
                if name:
                    headers.append((name.strip(" \t"), value.strip(" \t")))
            return Headers(headers)

    if not boundary:
        raise ValueError("no boundary in its Content-Type")
    decoder = Decoder(boundary, max_form_memory_size=FORM_MEMORY,
                      max_parts=max_parts)
    parts = []
    while True:
        chunk = stream.read(READ_CHUNK)
        decoder.receive_data(chunk or None)
        event = decoder.next_event()
        while not isinstance(event, (multipart.Epilogue, multipart.NeedData)):
            if isinstance(event, (multipart.Field, multipart.File)):
                parts.append((event.name, getattr(event, "filename", None),
                              bytearray()))
            elif isinstance(event, multipart.Data):
                field, name, data = parts[-1]
                data += event.data
                if name is None and len(data) > FORM_MEMORY:
                    raise RequestEntityTooLarge()
            event = decoder.next_event()
        if isinstance(event, multipart.Epilogue) or not chunk:
            return parts


def _drain(environ, length):
    """Reads and drops a refused body of up to DRAIN_LIMIT bytes, so that
    the client, still sending, reads the 413 rather than a reset
    connection (werkzeug's server only drains what is already there)."""
    if length > DRAIN_LIMIT:
        return
    stream = environ["wsgi.input"]
    while length > 0:
        data = stream.read(min(length, 2 ** 20))
        if not data:
            return
        length -= len(data)


def _http_message(e, request):
    if e.code == 404:
        return f"no such page: {request.path} (the page is /, the API " \
               f"/api/predict and /api/info)"
    if e.code == 405:
        return f"{request.method} is not allowed on {request.path} " \
               f"(use {', '.join(e.valid_methods or ())})"
    return f"{e.name}: {e.description}"


# ---------------------------------------------------------------- server

def listen(host, port):
    """A listening TCP socket on host:port (port 0: a free one), or
    JcdlError naming the address."""
    where = f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise JcdlError(where, f"cannot listen: {why}") from None


def url_of(sock):
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _handler(timeout):
    from werkzeug.serving import WSGIRequestHandler  # noqa: PLC0415

    class Handler(WSGIRequestHandler):
        """werkzeug's, logging plain lines (no terminal colours), with a
        read timeout (a client silent that long is dropped, its thread
        freed) and the API's JSON error for malformed HTTP."""

        def setup(self):
            self.timeout = timeout   # the socket's, from StreamRequestHandler
            super().setup()

        def log_request(self, code="-", size="-"):
            line = "".join(c if c.isprintable() else "?"
                           for c in getattr(self, "requestline", ""))
            self.log("info", '"%s" %s %s', line, code, size)

        def send_error(self, code, message=None, explain=None):
            """http.server's answer to a request it cannot parse (a bad
            request line, headers too long or too many), as the API's
            ``{"error": ...}`` instead of an HTML page."""
            short, long = self.responses.get(code, ("Error", ""))
            if self.request_version == "HTTP/0.9":   # no version read yet:
                self.request_version = "HTTP/1.0"    # a status line anyway
            body = (json.dumps({"error": f"{code} {message or short}: "
                                         f"{explain or long}"}) + "\n")
            body = body.encode("utf-8")
            self.log_error("code %d, message %s", code, message)
            self.send_response(code, message)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and \
                    code not in (204, 304):
                self.wfile.write(body)
    return Handler


def make_server(app, sock, timeout=READ_TIMEOUT_S):
    from werkzeug.serving import make_server as werkzeug_server  # noqa
    host, port = sock.getsockname()[:2]
    server = werkzeug_server(host, port, app, threaded=True,
                             request_handler=_handler(timeout),
                             fd=sock.fileno())
    sock.close()   # the server holds its own duplicate
    return server


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(model, host="127.0.0.1", port=8000, max_size=DEFAULT_MAX_SIZE,
          max_files=DEFAULT_MAX_FILES, max_pixels=DEFAULT_MAX_PIXELS,
          batch=32, load=None, timeout=READ_TIMEOUT_S):
    """Serves until Ctrl-C or SIGTERM. ``model``: a loaded predict.Model,
    or None with ``load`` a function returning one (called after the port
    is bound, so that a busy port is found before the slow loading).
    ``timeout``: seconds a client may send nothing before it is dropped."""
    sock = listen(host, port)
    try:
        app = App(model, max_size, max_files, max_pixels, batch)
        if app.model is None:
            app.model = load()
        url = url_of(sock)
        server = make_server(app, sock, timeout)
    except BaseException:
        sock.close()
        raise
    # Ctrl-C stops it even when started where SIGINT is ignored (a
    # script's background job); SIGTERM likewise
    previous = {sig: signal.signal(sig, h) for sig, h in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, _stop))}
    try:
        say(f"serving {app.model.model_path} ({app.model.K} emotions: "
            f"{', '.join(app.model.classes)}) on {url}  (Ctrl-C stops)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            say(f"note: {host} may be reachable from other machines")
        server.serve_forever()   # werkzeug's: returns on Ctrl-C, closed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    # a forward in progress ends first; the lock is kept, so that no request
    # still being read starts one while the interpreter exits
    app.lock.acquire(timeout=STOP_WAIT_S)
    say("stopped")


def say(text):
    print(f"jcdl serve: {text}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------- CLI

def cmd_serve(args):
    from .predict import model_from_args  # noqa: PLC0415
    serve(None, host=args.host, port=args.port, max_size=args.max_size,
          max_files=args.max_files, max_pixels=args.max_pixels,
          batch=args.batch, load=lambda: model_from_args(args),
          timeout=args.timeout)


def register(sub):
    from .predict import net_args  # noqa: PLC0415
    p = sub.add_parser(
        "serve", help="a local web page: drop images, see their emotions",
        description="Loads a trained net once (with the checks of 'jcdl "
                    "predict') and serves a web page where images dropped "
                    "or chosen are shown with a bar chart of their "
                    "predicted emotion distribution; POST /api/predict "
                    "(multipart, field 'image') answers the records "
                    "'jcdl predict' prints, GET /api/info the model. "
                    "Ctrl-C stops it.")
    net_args(p)    # --model --weights --mean --resize --classes --batch --gpu
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this "
                        "machine only)")
    p.add_argument("--port", type=int_arg(0, 65535), default=8000,
                   help="port (default 8000; 0: a free one, printed)")
    p.add_argument("--max-size", type=size_arg, default=DEFAULT_MAX_SIZE,
                   metavar="BYTES",
                   help="largest image file accepted, e.g. 500K, 16M "
                        "(default 16M)")
    p.add_argument("--max-files", type=int_arg(1, 1024),
                   default=DEFAULT_MAX_FILES,
                   help=f"most images in one request (default "
                        f"{DEFAULT_MAX_FILES})")
    p.add_argument("--max-pixels", type=int_arg(1), default=DEFAULT_MAX_PIXELS,
                   help=f"largest width x height accepted (default "
                        f"{DEFAULT_MAX_PIXELS})")
    p.add_argument("--timeout", type=int_arg(1, 3600),
                   default=READ_TIMEOUT_S, metavar="SECONDS",
                   help=f"drop a client that sends nothing for this long "
                        f"(default {READ_TIMEOUT_S})")
    p.set_defaults(func=cmd_serve)
