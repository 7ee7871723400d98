"""``python -m workbench fiftyone launch`` stops its App server when its PID alone gets SIGTERM or
SIGINT (a service manager, ``kill PID``): it exits 0, nothing listens on its port any more, and
none of its child processes (FiftyOne's server wrapper and the server) outlives it.

The launched process runs on the session's private database (see tests/test_fiftyone.py): it
inherits FIFTYONE_DATABASE_DIR and FIFTYONE_PRIVATE_DATABASE_PORT, which the ``fo`` fixture's
first query sets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid

import psutil
import pytest
from testing_constants import start_fiftyone_launch, wait_for_app_line

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]


@pytest.fixture(scope="module")
def fo():
    """fiftyone on the session's private database, connected (so its port is in os.environ,
    for the launched process)."""
    import fiftyone

    from workbench.inputs import InputError
    from workbench.integrations.fiftyone_db import check_database

    if fiftyone.config.database_dir != os.environ["FIFTYONE_DATABASE_DIR"]:
        pytest.fail(f"fiftyone uses {fiftyone.config.database_dir}, not the test database")
    try:
        check_database()  # connects; and not to another FiftyOne process's database
    except InputError as err:
        pytest.fail(str(err))
    return fiftyone


@pytest.fixture
def dataset_name(fo, tmp_path):
    """A persistent dataset of one PNG with one ground-truth box."""
    from PIL import Image

    image = tmp_path / "white.png"
    Image.new("RGB", (64, 48), "white").save(image)
    name = f"launch-test-{uuid.uuid4().hex[:8]}"
    ds = fo.Dataset(name, persistent=True)
    box = fo.Detection(label="thing", bounding_box=[0.1, 0.2, 0.5, 0.4])
    ds.add_sample(fo.Sample(filepath=str(image), ground_truth=fo.Detections(detections=[box])))
    yield name
    fo.delete_dataset(name)


def listening(port: int) -> bool:
    """Does any process listen on TCP ``port``?"""
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections(kind="tcp")
    )


def listener_pids(port: int) -> set[int]:
    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
    }


def running(process: psutil.Process) -> bool:
    """Still running (a zombie has ended; it only waits for its parent to read its status)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launch_pid_stops_the_app_server(dataset_name, free_port, sig):
    port = free_port()
    proc, lines = start_fiftyone_launch(dataset_name, port)  # the signal goes to the PID alone
    children: list[psutil.Process] = []
    try:
        seen = wait_for_app_line(lines, timeout=180)
        line = seen[-1]
        assert f"http://127.0.0.1:{port}/" in line, "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/fiftyone", timeout=30) as answer:
            assert answer.status == 200 and "version" in json.loads(answer.read())
        children = psutil.Process(proc.pid).children(recursive=True)
        # the server answering on the port is one of them, behind FiftyOne's wrapper
        assert listener_pids(port) and listener_pids(port) <= {c.pid for c in children}
        assert any("--51-service" in c.cmdline() for c in children)

        started = time.monotonic()
        os.kill(proc.pid, sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launch still runs 60 s after {sig.name}")
        output = "".join(seen) + "".join(lines.get() for _ in range(lines.qsize()))
        assert code == 0, output
        deadline = time.monotonic() + 30
        while listening(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not listening(port), f"port {port} still listened on after {sig.name}"
        survivors = [f"{c.pid} {' '.join(c.cmdline())}" for c in children if running(c)]
        assert not survivors, survivors
        print(f"{sig.name}: exit 0 and server gone {time.monotonic() - started:.1f} s after it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # FiftyOne's wrapper puts itself in its own process group: end the tree one by one
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.wait(timeout=30)
