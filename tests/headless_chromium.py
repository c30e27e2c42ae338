"""Open a page in headless Chromium and report what a person would see: errors, plots, a screenshot.

Speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (fds 3 and 4,
NUL-separated JSON), so it needs only the browser binary: no driver, no websocket
library, no network port. Used by tests/test_html_report.py and by
scripts/screenshot_report.py for the docs' screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Debian's /usr/bin/chromium is a shell wrapper; the binary behind it takes the same flags.
BROWSER_PATHS = ("/usr/lib/chromium/chromium",)

# What every figure.plot holds once laid out: its kind, the size of its <svg>, how much it draws.
PLOTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('figure.plot')).map(f => {
  const svg = f.querySelector(':scope > svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {kind: f.dataset.plot, svgs: f.querySelectorAll('svg').length, width: box.width, height: box.height,
          marks: svg ? svg.querySelectorAll('path, rect, use, line, polyline').length : 0,
          texts: svg ? svg.querySelectorAll('text').length : 0};
}))"""


def find_browser() -> str | None:
    for path in BROWSER_PATHS:
        if os.access(path, os.X_OK):
            return path
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    plots: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    page_height: int = 0


class _Pipe:
    """One CDP connection over a pair of pipes; ``send`` waits for its reply, events are kept."""

    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int, timeout: float):
        self.process, self.to_browser, self.from_browser, self.timeout = process, to_browser, from_browser, timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the browser")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the browser closed the pipe (exit {self.process.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + seconds
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def _error_lines(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console.error: " + " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip())
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {params.get('errorText')} ({params.get('type')})")
    return errors


def check_page(
    page: Path, screenshot: Path | None = None, *, width: int = 1280, max_height: int = 16000, timeout: float = 60.0
) -> PageCheck:
    """Load ``page`` (a file) in headless Chromium; collect errors and plot boxes, optionally a PNG of the page's top ``max_height`` px."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()

    def child_fds():  # the browser reads commands on fd 3 and writes replies on fd 4
        os.dup2(to_browser_read, 100)
        os.dup2(from_browser_write, 101)
        os.dup2(100, 3)
        os.dup2(101, 4)
        os.close(100)
        os.close(101)

    with tempfile.TemporaryDirectory(prefix="tfopt-chromium-") as profile_dir:
        process = subprocess.Popen(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", f"--window-size={width},900", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds=False: the pipes are close-on-exec (PEP 446), only their dup2 copies 3 and 4 reach the browser
            preexec_fn=child_fds, close_fds=False,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        pipe = _Pipe(process, to_browser_write, from_browser_read, timeout)
        try:
            target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session)
            pipe.events.clear()
            pipe.send("Page.navigate", session, url=page.resolve().as_uri())
            pipe.wait_for("Page.loadEventFired", timeout)
            result = PageCheck()
            result.plots = json.loads(pipe.send("Runtime.evaluate", session, expression=PLOTS_JS, returnByValue=True)["result"]["value"])
            result.title = pipe.send("Runtime.evaluate", session, expression="document.title", returnByValue=True)["result"]["value"]
            result.page_height = int(pipe.send("Runtime.evaluate", session, expression="document.documentElement.scrollHeight", returnByValue=True)["result"]["value"])
            if screenshot is not None:
                height = min(result.page_height, max_height)
                pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False)
                shot = pipe.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                                 clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            result.errors = _error_lines(pipe.events)
            result.requests = [e["params"]["request"]["url"] for e in pipe.events if e.get("method") == "Network.requestWillBeSent"]
            try:
                pipe.send("Browser.close")
            except (RuntimeError, TimeoutError):
                pass
            return result
        finally:
            os.close(to_browser_write)
            os.close(from_browser_read)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
