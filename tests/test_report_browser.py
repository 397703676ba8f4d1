"""The smoke profile's results page in a real browser: headless Chromium draws it, and nothing goes wrong.

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``: commands on fd 3, replies and
events on fd 4, NUL-separated JSON), so console errors, uncaught exceptions and failed loads are read
as events rather than scraped from logs. Debian's ``chromium`` package is installed when missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from nasaudit.config import load_profile
from nasaudit.report.html import write_report
from test_report import _write_results

pytestmark = pytest.mark.slow
WIDTH, HEIGHT = 1280, 1600


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary, installed with apt (as root) when it is not there yet."""
    found = shutil.which("chromium")
    if found is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("chromium is missing and cannot be installed here (needs apt-get as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       check=True, env=env, capture_output=True)  # fmt: skip
        found = shutil.which("chromium")
    assert found is not None
    return found


class Browser:
    """One headless Chromium page over the DevTools pipe."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def pipes_at_3_and_4() -> None:  # in the child, before it execs chromium
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=pipes_at_3_and_4,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(commands_read)
        os.close(replies_write)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, session: str | None = None, **params: object) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    def page(self, method: str, **params: object) -> dict:
        return self.send(method, self.session, **params)

    def _until(self, done, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if done(message):
                    return message
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._replies], [], [], left)[0], "chromium did not answer"
            chunk = os.read(self._replies, 1 << 20)
            assert chunk, "chromium closed its DevTools pipe"
            self._buffer += chunk

    def load(self, url: str) -> tuple[np.ndarray, list[str]]:
        """Open ``url``; its screenshot (H×W×RGBA) and every console error, exception or failed load."""
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                  mobile=False)  # fmt: skip
        self.page("Page.navigate", url=url)
        self._until(lambda m: m.get("method") == "Page.loadEventFired")
        png = self.page("Page.captureScreenshot", format="png")["data"]
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                errors.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url', '')})")
        return imread(io.BytesIO(base64.b64decode(png)), format="png"), errors

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # it may close the pipe before it replies
            self.send("Browser.close")
        self.process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._replies)


def _blank(image: np.ndarray) -> bool:
    """A screenshot that shows (almost) nothing: under 2% non-white pixels or a handful of colours."""
    rgb = np.round(image[..., :3] * 255).astype(np.uint8)
    inked = (rgb < 245).any(axis=-1).mean()
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    return inked < 0.02 or colours < 16


def _open(binary: str, path: Path, profile_dir: Path) -> tuple[np.ndarray, list[str]]:
    browser = Browser(binary, profile_dir)
    try:
        return browser.load(path.resolve().as_uri())
    finally:
        browser.close()


def test_the_checks_catch_a_blank_page_and_console_errors(chromium, tmp_path) -> None:
    """The two checks below can fail: a page with nothing on it is blank, a broken one has errors."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>x</title></head><body></body></html>")
    image, errors = _open(chromium, blank, tmp_path / "p1")
    assert image.shape[:2] == (HEIGHT, WIDTH) and _blank(image) and errors == []
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><p>x</p><img src="missing.png">'
                      '<script>console.error("boom")</script></body></html>')  # fmt: skip
    _, errors = _open(chromium, broken, tmp_path / "p2")
    assert any("boom" in e for e in errors) and any("missing.png" in e for e in errors), errors


def test_the_smoke_report_renders_in_chromium_without_errors(chromium, tmp_path) -> None:
    results = _write_results(tmp_path / "results")
    page = write_report(load_profile("smoke"), results)
    image, errors = _open(chromium, page, tmp_path / "profile")
    assert errors == []
    assert image.shape[:2] == (HEIGHT, WIDTH) and not _blank(image)
    # the verdict's coloured badges and Table 1's green and red cells are on the first screen
    rgb = np.round(image[..., :3] * 255).astype(int)
    green = ((np.abs(rgb - (0xD7, 0xF0, 0xDC)).sum(-1)) < 12).sum()
    red = ((np.abs(rgb - (0xF7, 0xD4, 0xD0)).sum(-1)) < 12).sum()
    assert green > 500 and red > 500, (green, red)
