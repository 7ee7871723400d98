"""This process's FiftyOne App server, for the app's "Send to FiftyOne": started on the first
send (never at import or page load), reused while it answers, stopped when the process exits.

    base = show(dataset)                         # "http://127.0.0.1:5151/", showing dataset
    app_url(base, dataset.name, sample.id)       # that sample, opened in the App's modal

Bound to 127.0.0.1 only. Port: ``WORKBENCH_FIFTYONE_PORT`` (default 5151, FiftyOne's own
default). When something other than this process's server holds that port (another process's
App may serve another database), the OS picks a free port instead; the links name the port in
use. The server is FiftyOne's own (a child process), owned by a ``fo.Session`` that this module
keeps, so a notebook's ``fo.launch_app`` session is left alone; ``atexit`` closes the session,
which stops the child. fiftyone is imported inside functions only: importing this module
starts no database.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import urllib.request
from urllib.parse import quote

from workbench.inputs import InputError

PORT_VARIABLE = "WORKBENCH_FIFTYONE_PORT"
DEFAULT_PORT = 5151
ADDRESS = "127.0.0.1"

_lock = threading.Lock()  # the app's handlers run in threads
_session = None  # the fo.Session this process started, if any
_stop_registered = False


def requested_port() -> int:
    """The port ``WORKBENCH_FIFTYONE_PORT`` asks for (default :data:`DEFAULT_PORT`)."""
    text = os.environ.get(PORT_VARIABLE, "").strip() or str(DEFAULT_PORT)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InputError(
            f"{PORT_VARIABLE}={text!r} is not a TCP port: set it to a number from 1 to 65535, "
            f"or unset it for {DEFAULT_PORT}"
        )
    return int(text)


def _bindable(port: int) -> int | None:
    """``port`` (0: one the OS picks) if a server could listen on it at ADDRESS now, else None."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is free
        try:
            s.bind((ADDRESS, port))
        except OSError:
            return None
        return s.getsockname()[1]


def _base_url(session) -> str:
    return f"http://{ADDRESS}:{session.server_port}/"


def _answers(base: str) -> bool:
    """Does a FiftyOne server answer its version request at ``base``? (no proxy: it is local)"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(base + "fiftyone", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def app_url(base: str, dataset_name: str, sample_id: str | None = None) -> str:
    """The App's page of ``dataset_name`` at ``base``; with ``sample_id``, that sample opened."""
    url = f"{base}datasets/{quote(dataset_name, safe='')}"
    return url if sample_id is None else f"{url}?id={quote(str(sample_id), safe='')}"


def show(dataset) -> str:
    """Show ``dataset`` (a ``fo.Dataset``) in this process's App server, starting the server if
    none of ours answers (5-20 s); returns its base URL, ``http://127.0.0.1:<port>/``. Open App
    tabs are refreshed, so they list samples added since."""
    global _session, _stop_registered
    import fiftyone as fo

    with _lock:
        if _session is not None and _answers(_base_url(_session)):
            # The session's client connects to its server in the background (its first try
            # comes before the server is up, the next 10 s later); until then FiftyOne raises
            # RuntimeError, and the App gets the session's state when the client connects.
            with contextlib.suppress(RuntimeError):
                if _session.dataset is None or _session.dataset.name != dataset.name:
                    _session.dataset = dataset
                else:
                    _session.refresh()
            return _base_url(_session)
        if _session is not None:  # ours, but it stopped answering: release it, start another
            _session.close()
            _session = None
        port = _bindable(requested_port()) or _bindable(0)
        # fo.Session, not fo.launch_app: that one logs ssh port-forwarding advice for remote
        # sessions and replaces FiftyOne's global session (a notebook's).
        _session = fo.Session(dataset, remote=True, address=ADDRESS, port=port, auto=False)
        if not _stop_registered:
            atexit.register(stop)
            _stop_registered = True
        return _base_url(_session)


def stop() -> None:
    """Stop this process's App server, if it started one (also run at exit)."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None:
        session.close()
