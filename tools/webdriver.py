"""A minimal W3C WebDriver client for Debian's chromium + chromium-driver:
the protocol is JSON over HTTP, so the standard library is enough (no
selenium). Used by tests/test_serve.py and tools/serve_screenshot.py.

    with Browser(width=1200, height=900) as b:
        b.get("http://127.0.0.1:8000/")
        b.find("input[type=file]").send_keys("/abs/path.png")
        b.script("return document.title")
        b.screenshot("page.png")
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # W3C's element key


class WebDriverError(RuntimeError):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium():
    """(chromedriver, chromium binary) or raise with the packages to install."""
    driver = shutil.which("chromedriver")
    binary = next((p for p in ("/usr/lib/chromium/chromium",
                               shutil.which("chromium") or "")
                   if p and os.path.exists(p)), None)
    if not driver or not binary:
        raise WebDriverError("needs Debian's chromium and chromium-driver: "
                             "apt-get install chromium chromium-driver")
    return driver, binary


class Element:
    def __init__(self, browser, eid):
        self.browser, self.id = browser, eid

    def send_keys(self, text):
        self.browser._call("POST", f"/element/{self.id}/value",
                           {"text": text})

    def click(self):
        self.browser._call("POST", f"/element/{self.id}/click", {})


class Browser:
    """A headless chromium driven through chromedriver; its profile lives in
    a temporary folder that close() removes."""

    def __init__(self, width=1200, height=900, timeout=30):
        driver, binary = find_chromium()
        self.profile = tempfile.mkdtemp(prefix="jcdl-chromium-")
        self.port = _free_port()
        self.log = open(os.path.join(self.profile, "chromedriver.log"), "wb")
        self.proc = subprocess.Popen(
            [driver, f"--port={self.port}"], stdout=self.log,
            stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = None
        try:
            self._wait_ready(timeout)
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": ["--headless=new", "--no-sandbox",
                             "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--disable-extensions",
                             f"--user-data-dir={self.profile}/profile",
                             f"--window-size={width},{height}"]}}}}
            value = self._request("POST", "/session", caps, timeout=60)
            self.session = value["sessionId"]
            self.set_window(width, height)
        except BaseException:
            self.close()
            raise

    # -- protocol
    def _request(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                payload = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            v = payload.get("value", {})
            raise WebDriverError(f"{method} {path}: {v.get('error')}: "
                                 f"{v.get('message', '')[:2000]}") from None
        return payload.get("value")

    def _call(self, method, path, body=None, timeout=60):
        return self._request(method, f"/session/{self.session}{path}", body,
                             timeout)

    def _wait_ready(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise WebDriverError("chromedriver exited at start")
            try:
                if self._request("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not start")

    # -- commands
    def get(self, url):
        self._call("POST", "/url", {"url": url})

    def set_window(self, width, height):
        self._call("POST", "/window/rect", {"width": width,
                                            "height": height})

    def find(self, css):
        v = self._call("POST", "/element", {"using": "css selector",
                                            "value": css})
        return Element(self, v[ELEMENT])

    def script(self, js, *args):
        return self._call("POST", "/execute/sync",
                          {"script": js, "args": list(args)})

    def wait(self, js, timeout=30, *args):
        """Polls a script until it returns something truthy; returns it."""
        end = time.monotonic() + timeout
        while True:
            v = self.script(js, *args)
            if v:
                return v
            if time.monotonic() > end:
                raise WebDriverError(f"timed out waiting for: {js}")
            time.sleep(0.05)

    def cdp(self, cmd, **params):
        """A DevTools protocol command through chromedriver, e.g.
        Emulation.setDeviceMetricsOverride for a phone-sized viewport."""
        return self._call("POST", "/goog/cdp/execute",
                          {"cmd": cmd, "params": params})

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return path

    def close(self):
        if self.session:
            try:
                self._request("DELETE", f"/session/{self.session}",
                              timeout=20)
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
