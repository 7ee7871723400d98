"""Serving the FiftyOne App from the command line until the process is told to stop.

    with serving_until_signal():       # SIGTERM and SIGINT (Ctrl-C) end the block
        session = launch(name, port=5151)
        session.wait(-1)
    # here the App server's processes are gone and its port is free

FiftyOne runs its App server as a child process, behind a wrapper (``fiftyone/service/main.py``
``--51-service server``) that stops the server when its stdin closes. Python's default SIGTERM
kills the launching process without closing the session: the server outlives it (by up to
half a minute in our runs, longest when the database went down with it), and a signal that
arrives while the server starts leaves a half-started one. So both signals raise
KeyboardInterrupt in the main thread while the block runs; leaving the block (by a signal, an
error or normally) closes FiftyOne's session (``fo.close_app``: the wrapper terminates the server
and exits) and then terminates, or kills, whatever of the server's process tree is left.
Further signals are ignored while that runs (it is bounded: about 30 s at most), so it always
runs to its end.

Only App servers this process started are touched (its children's ``--51-service server``
wrappers and their descendants); the database service is FiftyOne's to stop (at exit, once no
process uses it). fiftyone is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

import psutil

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLOSE_TIMEOUT = 20.0  # seconds fo.close_app may take (the wrapper waits for the server)
KILL_TIMEOUT = 5.0  # seconds a terminated process gets before it is killed


def _interrupt(signum: int, frame) -> None:
    """SIGTERM and SIGINT: stop serving (once; the clean-up is not interrupted)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def serving_until_signal() -> Iterator[None]:
    """Run the block until SIGTERM or SIGINT (either ends it quietly), then stop the FiftyOne
    App server this process started and wait until its processes are gone."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_app_servers()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def app_server_processes() -> list[psutil.Process]:
    """The processes of the FiftyOne App servers this process started: each wrapper's
    descendants (deepest first), then the wrapper."""
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            args = child.cmdline()
            if "--51-service" in args and args[args.index("--51-service") + 1 :][:1] == ["server"]:
                found += [*reversed(child.children(recursive=True)), child]
    return found


def stop_app_servers() -> None:
    """Close FiftyOne's App session (its wrapper stops the server), then terminate what is
    left of the servers' processes, and kill what outlives that."""
    processes = app_server_processes()
    fo = sys.modules.get("fiftyone")
    if fo is not None:
        # In a thread: closing waits, without a timeout, for the wrapper to stop the server.
        closing = threading.Thread(target=fo.close_app, daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT)
    for process in _wait_gone(processes, 0.0):  # deepest first: no server outlives its wrapper
        with contextlib.suppress(psutil.Error):
            process.terminate()
    for process in _wait_gone(processes, KILL_TIMEOUT):
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(processes, KILL_TIMEOUT)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``processes`` to end; the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _running(process: psutil.Process) -> bool:
    """Is it running? (a zombie has ended: it only waits for its parent to read its status)"""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
