#!/usr/bin/env python3
"""Screenshots of `jcdl serve`'s page over the demo's net (`make screenshot`):
starts `jcdl serve` on a free local port with the net `jcdl demo` trained
(runs/demo/jcdl), drops one test image of each of a few scenes on the page
in headless chromium, and writes OUT/page.png (desktop width) and
OUT/page-narrow.png (a phone's width).

    .venv/bin/python tools/serve_screenshot.py --demo runs/demo --out runs/serve
"""
import argparse
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from webdriver import Browser  # noqa: E402

BIN = Path(sys.executable).parent


def demo_net(demo, variant):
    """(deploy, weights, mean, classes, [(test image, its distribution)])
    of a demo's variant."""
    folder = demo / variant
    deploy = folder / "deploy.prototxt"
    weights = sorted((folder / "snapshots").glob("*.caffemodel"),
                     key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    for path in (deploy, demo / "mean.binaryproto",
                 demo / "lists/classes.txt", demo / "lists/test.txt"):
        if not path.is_file():
            sys.exit(f"serve_screenshot: {path}: missing; run 'make demo' "
                     f"(jcdl demo --out {demo}) first")
    if not weights:
        sys.exit(f"serve_screenshot: no caffemodel in {folder}/snapshots; "
                 f"run 'make demo' first")
    rows = [line.split() for line in
            (demo / "lists/test.txt").read_text().splitlines() if line]
    return deploy, weights[-1], demo / "mean.binaryproto", \
        demo / "lists/classes.txt", \
        [(demo / "data" / r[0], [float(v) for v in r[1:]]) for r in rows]


def pick(rows, n):
    """Test images whose ground-truth dominant emotions differ, n at most."""
    chosen = {}
    for path, p in rows:
        chosen.setdefault(max(range(len(p)), key=p.__getitem__), path)
    return list(chosen.values())[:n]


def start_server(deploy, weights, mean, classes):
    proc = subprocess.Popen(
        [str(BIN / "jcdl"), "serve", "--model", str(deploy), "--weights",
         str(weights), "--mean", str(mean), "--classes", str(classes),
         "--port", "0"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    url = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            m = re.search(r"^jcdl serve: serving .* on (http://\S+)", line)
            if m and not url:
                url.append(m.group(1))
                ready.set()
            elif line.startswith("jcdl serve:"):   # not the request log
                sys.stderr.write(line)
        ready.set()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(120)
    if not url:
        proc.kill()
        sys.exit("serve_screenshot: jcdl serve did not start")
    return proc, url[0]


def shoot(browser, url, images, path, width, height, mobile):
    browser.cdp("Emulation.setDeviceMetricsOverride", width=width,
                height=height, deviceScaleFactor=1 if not mobile else 2,
                mobile=mobile)
    browser.get(url)
    browser.wait("return document.querySelector('#model').textContent"
                 ".includes('emotions')")
    browser.find("#files").send_keys("\n".join(str(p.resolve())
                                               for p in images))
    browser.wait("""const c = document.querySelectorAll('.card');
        return c.length === arguments[0] &&
            [...c].every(x => x.dataset.state === 'done')""", 60,
                 len(images))
    full = browser.script("return Math.ceil(document.documentElement"
                          ".scrollHeight)")
    browser.cdp("Emulation.setDeviceMetricsOverride", width=width,
                height=max(height, full),
                deviceScaleFactor=1 if not mobile else 2, mobile=mobile)
    browser.screenshot(path)
    print(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=Path("runs/demo"))
    p.add_argument("--variant", default="jcdl")
    p.add_argument("--out", type=Path, default=Path("runs/serve"))
    p.add_argument("--images", type=int, default=6)
    args = p.parse_args()
    deploy, weights, mean, classes, images = demo_net(args.demo,
                                                      args.variant)
    images = pick(images, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(deploy, weights, mean, classes)
    try:
        with Browser(1280, 900) as b:
            shoot(b, url, images, args.out / "page.png", 1280, 800, False)
            shoot(b, url, images[:3], args.out / "page-narrow.png", 390,
                  844, True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


if __name__ == "__main__":
    main()
