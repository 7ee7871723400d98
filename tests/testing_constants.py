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


def chromium_context(playwright, width: int, height: int = 1000):
    """A headless Debian Chromium context of its own profile, ``width`` x ``height`` pixels."""
    import tempfile

    return playwright.chromium.launch_persistent_context(
        tempfile.mkdtemp(),
        executable_path="/usr/bin/chromium",
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": width, "height": height},
    )
