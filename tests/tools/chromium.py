"""Load a page in a real headless Chromium and report what a reader would see, over the DevTools pipe.

``chromium --remote-debugging-pipe`` reads DevTools protocol commands (NUL-terminated JSON) on file
descriptor 3 and writes replies and events on 4, so no websocket library and no port are needed.
:func:`load_page` navigates to a file, waits for the load event, and returns the console errors
and uncaught exceptions, how many images decoded, and a PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["chromium", "load_page", "PageLoad"]


def chromium() -> str | None:
    """The Chromium executable (Debian's ``chromium`` package), or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: int = 0
    decoded: int = 0  # images that loaded and have a size
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, executable: str, profile: str) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child: commands on fd 3, replies on fd 4 (either may already be one of them)
            read, write = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read, 3)
            os.dup2(write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False)  # fds 3 and 4 as dup2 left them: inherited
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self.receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self.receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._to_child, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def load_page(path: Path, executable: str) -> PageLoad:
    """Open ``path`` in headless Chromium; console errors, images decoded and a full-page screenshot."""
    with tempfile.TemporaryDirectory(prefix="vtsched-chromium-") as profile:
        pipe = _Pipe(executable, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired")
            counts = pipe.send("Runtime.evaluate", {"returnByValue": True, "awaitPromise": True, "expression": (
                "Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth > 0,"
                " () => false))).then(ok => [ok.length, ok.filter(Boolean).length])")}, session=session)
            images, decoded = counts["result"]["value"]
            metrics = pipe.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
                "x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}},
                session=session)
            errors = []
            for event in pipe.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
                elif method == "Runtime.exceptionThrown":
                    errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    errors.append("log: " + params["entry"].get("text", ""))
            return PageLoad(errors, int(images), int(decoded), base64.b64decode(shot["data"]))
        finally:
            pipe.close()
