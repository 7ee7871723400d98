"""The app's "Send to FiftyOne" links to a working FiftyOne App: the first send starts a server
on 127.0.0.1 (at ``WORKBENCH_FIFTYONE_PORT``), the next reuses it, and stopping ends it. Tiny
random models; the database is the test session's own (conftest.py)."""

from __future__ import annotations

import re
import socket
import urllib.request

import psutil
import pytest
from test_app import IMAGE, SHAPES, STAR, compare, payload, tiny

from workbench.app import export
from workbench.app.models import Models
from workbench.integrations import fiftyone_app_server
from workbench.integrations.fiftyone_app import APP_DATASET

pytestmark = [pytest.mark.slow, pytest.mark.fiftyone]
LINK = re.compile(r"\]\((http://[^)\s]+)\)")  # the targets of the message's Markdown links
OTHER_IMAGE = SHAPES / "images" / "shapes_000001.png"


@pytest.fixture(scope="module")
def models() -> Models:
    return Models.from_predictors(tiny(0), tiny(1))


@pytest.fixture
def app_port(free_port, monkeypatch):
    """The port asked for through the environment; no App server before (an earlier test's is
    stopped), none after."""
    fiftyone_app_server.stop()
    port = free_port()
    monkeypatch.setenv(fiftyone_app_server.PORT_VARIABLE, str(port))
    yield port
    fiftyone_app_server.stop()


def get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local, no proxy
    with opener.open(url, timeout=30) as response:
        return response.status, response.read()


def app_servers() -> list[psutil.Process]:
    """This process's FiftyOne App servers (FiftyOne runs each as a ``--51-service server``)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--51-service" in command and command[command.index("--51-service") + 1] == "server":
            found.append(child)
    return found


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_two_sends_link_to_one_app_server_holding_both_models_predictions(
    models, app_port, monkeypatch
):
    import fiftyone as fo

    refreshed, refresh = [], fo.Session.refresh
    monkeypatch.setattr(fo.Session, "refresh", lambda s: refreshed.append(s) or refresh(s))
    assert not app_servers()
    first, _, _ = compare(models, payload(IMAGE, STAR), threshold=0.05)
    message = export.send_to_fiftyone(first)
    links = LINK.findall(message)
    base = f"http://127.0.0.1:{app_port}/"
    assert len(links) == 2 and all(link.startswith(base) for link in links), message
    sample_link, dataset_link = links
    assert dataset_link == f"{base}datasets/{APP_DATASET}"
    for link in links:
        status, page = get(link)
        assert status == 200 and b"<title>FiftyOne</title>" in page, link
    assert get(base + "fiftyone")[1].startswith(b'{"version"')  # FiftyOne's server answers
    (server,) = app_servers()

    second, _, _ = compare(models, payload(OTHER_IMAGE, STAR), threshold=0.05)
    again = export.send_to_fiftyone(second)
    assert all(link.startswith(base) for link in LINK.findall(again)), again
    assert [p.pid for p in app_servers()] == [server.pid]  # reused: still one server, the same
    assert len(refreshed) == 1  # open App tabs are told to reload
    ds = fo.load_dataset(APP_DATASET)
    sample_id = sample_link.split("?id=")[1]
    for session, link in ((first, sample_link), (second, LINK.findall(again)[0])):
        sample = ds[link.split("?id=")[1]]
        for model, shown in session.comparison.shown().items():
            found = sample[f"{model}_predictions"].detections
            assert len(found) == len(shown) > 0, model
            assert sorted(d.confidence for d in found) == pytest.approx(
                sorted(shown.scores.tolist())
            )
    assert sample_id != LINK.findall(again)[0].split("?id=")[1]  # another image, another sample

    fiftyone_app_server.stop()
    assert not app_servers() and refused(app_port)


def test_a_taken_port_gives_way_to_a_free_one(models, app_port):
    with socket.socket() as squatter:  # something that is not our App server holds the port
        squatter.bind(("127.0.0.1", app_port))
        squatter.listen()
        session, _, _ = compare(models, payload(IMAGE, STAR), threshold=0.05)
        message = export.send_to_fiftyone(session)
        (url, _) = LINK.findall(message)
        port = int(re.match(r"http://127\.0\.0\.1:(\d+)/", url).group(1))
        assert port != app_port and get(url)[0] == 200, message


def test_a_port_that_is_not_a_number_is_named(monkeypatch):
    monkeypatch.setenv(fiftyone_app_server.PORT_VARIABLE, "fifty")
    with pytest.raises(ValueError, match="WORKBENCH_FIFTYONE_PORT='fifty' is not a TCP port"):
        fiftyone_app_server.requested_port()
