"""Constants several test files share. Imported as ``testing_constants`` (pytest puts tests/ on
sys.path), a name no module in benchmarks/ uses, since some tests put benchmarks/ there too."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny_shapes_sft.yaml")
# A few fast steps of the tiny detector on 96 px shapes: enough to exercise every part of a run.
QUICK_SHAPES = [
    "data.shapes_train_images=16",
    "data.shapes_val_images=4",
    "data.shapes_image_size=96",
    "data.shapes_object_size=[12, 40]",
    "data.min_size=96",
    "data.max_size=96",
    "train.log_every=1",
]
# Debian's Chromium, headless, with nothing reaching for the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_context(
    playwright, width: int, height: int = 1000, executable: str = "/usr/bin/chromium"
):
    """A headless Chromium context (Debian's by default) of its own profile, ``width`` x
    ``height`` pixels."""
    import tempfile

    return playwright.chromium.launch_persistent_context(
        tempfile.mkdtemp(),
        executable_path=executable,
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": width, "height": height},
    )


def start_fiftyone_launch(dataset_name: str, port: int):
    """``python -m workbench fiftyone launch NAME --port PORT`` in its own session (a signal to
    its PID reaches it alone), and a queue its output lines arrive in: ``(proc, lines)``."""
    import queue
    import subprocess
    import sys
    import threading

    command = [sys.executable, "-m", "workbench", "fiftyone", "launch", dataset_name]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    return proc, lines


def wait_for_app_line(lines, timeout: float) -> list[str]:
    """The launch's output up to its "FiftyOne App ..." line (the last one), each line waited
    for at most ``timeout`` seconds (import, then the App server start)."""
    seen = [""]
    while "FiftyOne App" not in seen[-1]:
        seen.append(lines.get(timeout=timeout))
    return seen[1:]


def cli_in_process(capsys, *args) -> tuple[int, str, str]:
    """``python -m workbench ARGS`` in this process: (status, stdout, stderr)."""
    from workbench.cli import main

    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as done:
        status = done.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def launch_demo(demo) -> str:
    """Serve a gradio app on a free port of 127.0.0.1 without blocking; its URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    return f"http://127.0.0.1:{port}/"


def canvas_painted(annotator: str) -> str:
    """A page function: the annotator's (``#target``, ...) canvas shows the image."""
    return f"""() => {{
    const canvas = document.querySelector('{annotator} canvas');
    if (!canvas || !canvas.width || !canvas.height) return false;
    const pixel = canvas.getContext('2d').getImageData(canvas.width / 2, canvas.height / 2, 1, 1);
    return pixel.data[3] > 0;
}}"""


def drag_box(page, start, end, label: str, annotator: str = "#target") -> None:
    """Drag from ``start`` to ``end`` (pixels from the canvas centre, where the annotator draws
    the image) and name the box in the label dialog the annotator opens."""
    from playwright.sync_api import TimeoutError as NoDialog

    name = page.locator('#model-box-edit input[aria-label="Label"]')
    canvas = page.locator(f"{annotator} canvas").first
    for attempt in range(3):
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx + start[0], cy + start[1])
        page.mouse.down()
        page.mouse.move(cx + end[0], cy + end[1], steps=8)
        page.mouse.up()
        try:  # no dialog, no box: a drag the annotator missed while it re-rendered (busy CPU)
            name.wait_for(state="visible", timeout=10_000)
            break
        except NoDialog:
            if attempt == 2:
                raise
    name.fill(label)
    name.press("Enter")  # confirms the dialog
    ok = page.locator("#model-box-edit button", has_text="OK")
    if ok.is_visible():
        ok.click()
