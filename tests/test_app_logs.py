"""What ``python app.py`` writes to its log: its address at startup, then nothing per page load
(no gradio debug prints, no access lines), and no FiftyOne until "Send to FiftyOne"; what
matters (the handlers' errors with tracebacks, other warnings) still gets through."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from testing_constants import CHROMIUM_FLAGS

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
STARTUP = "Running on local URL"

pytestmark = pytest.mark.slow  # each test starts a Python with gradio (and more) in it


def test_quiet_logs_drops_the_noise_and_keeps_errors_with_tracebacks():
    code = """if True:
        import logging, app
        app.quiet_logs()
        import fiftyone  # adds its own stdout handler to its loggers; starts no database
        import gradio.routes
        gradio.routes.print("id=0f, environment=client, type=component, file_name=index.js")
        gradio.routes.print("Error cleaning up file x: gone")
        logging.getLogger("fiftyone.core.config").warning(
            "The `show_label` App config option has been removed and no longer has any effect")
        logging.getLogger("fiftyone.core.odm.database").warning(
            "You are running the oldest supported major version of MongoDB. Please refer to")
        logging.getLogger("fiftyone.core.dataset").warning("a FiftyOne warning that stays")
        logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:7860/ 200 OK")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("workbench.app.layout").exception("handler compare failed")
    """
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    # fiftyone's warning once, through its own handler; gradio's other prints stay
    assert proc.stdout == "Error cleaning up file x: gone\na FiftyOne warning that stays\n"
    lines = proc.stderr.splitlines()
    assert lines[0] == "ERROR workbench.app.layout: handler compare failed", lines
    assert lines[1] == "Traceback (most recent call last):" and "ZeroDivisionError" in lines[-1]


def fiftyone_processes(pid: int) -> list[str]:
    """Command lines of ``pid``'s descendants that are FiftyOne services (database, App)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "--51-service" in command or "mongod" in command:
            found.append(command)
    return found


def settled(path: Path, quiet_seconds: float = 3.0) -> str:
    """``path``'s text once it has not changed for ``quiet_seconds``."""
    text, since = path.read_text(), time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        time.sleep(0.5)
        if (now := path.read_text()) != text:
            text, since = now, time.monotonic()
    return text


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_page_loads_add_nothing_to_the_log_and_start_no_fiftyone(free_port, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    log_path = tmp_path / "app.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # every line in the log as it is written
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + 180
        while STARTUP not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(1)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        at_startup = settled(log_path)  # gradio prints a line or two after its address
        with sync_playwright() as p:
            for _ in range(2):  # a fresh browser each time: every file is fetched again
                context = p.chromium.launch_persistent_context(
                    tempfile.mkdtemp(),
                    executable_path=str(CHROMIUM),
                    headless=True,
                    args=CHROMIUM_FLAGS,
                )
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=60_000)
                # the annotator (a custom component, whose files gradio printed) rendered
                page.wait_for_selector("#target [data-testid=image]", timeout=60_000)
                time.sleep(2)
                context.close()
        after = log_path.read_text()
        assert after == at_startup, f"page loads wrote to the log:\n{after[len(at_startup) :]}"
        assert len(at_startup.splitlines()) <= 4, at_startup
        assert not fiftyone_processes(proc.pid), "a page load started FiftyOne"
    finally:
        proc.terminate()
        proc.wait(30)
