"""The app serves no file outside its examples and uploads, binds locally, and caps uploads."""

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from app import MAX_UPLOAD, build_demo, parse_args, serve
from workbench.model.build import build_detector
from workbench.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    predictor = Predictor(build_detector("tiny"), min_size=96, max_size=96)
    demo = build_demo({"sft": predictor, "grqo": predictor})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve(demo, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def status(url: str, data: bytes | None = None, headers=None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_no_file_outside_the_examples_is_served(server):
    for path in (
        "/etc/passwd",
        REPO / "README.md",
        REPO / "workbench" / "config.py",
        "../../etc/passwd",
    ):
        assert status(f"{server}/gradio_api/file={path}") in (403, 404), path
    assert status(f"{server}/gradio_api/file={REPO / 'examples' / 'README.md'}") == 200


def test_uploads_above_the_limit_are_refused(server):
    limit = int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    boundary = "workbenchboundary"

    def body(size: int) -> bytes:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        return head + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert status(f"{server}/gradio_api/upload", body(1024), headers) == 200
    assert status(f"{server}/gradio_api/upload", body(limit + 1024), headers) == 413


def test_the_command_line_binds_locally_by_default():
    assert parse_args([]).host == "127.0.0.1"


@pytest.mark.slow
def test_sixteen_concurrent_users_for_a_minute_get_no_errors(server):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from app_load import run_load

    result = run_load(server + "/", clients=16, seconds=60)
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] >= 16  # every user got at least one answer
