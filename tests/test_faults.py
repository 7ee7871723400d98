"""Training survives being killed: SIGKILL at random steps, then resume, ends where an
uninterrupted run ends, bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.model.build import from_pretrained

TINY = "configs/tiny_shapes_sft.yaml"
RUN = [
    "data.shapes_train_images=16",
    "data.shapes_val_images=2",
    "data.shapes_image_size=96",
    "data.shapes_object_size=[12, 40]",
    "data.min_size=96",
    "data.max_size=96",
    "train.epochs=3",
    "train.checkpoint_every=1",
    "train.eval_every_epochs=0",
    "train.log_every=1",
]
TOTAL_STEPS = 12  # 16 images, batch 4, 3 epochs


def command(out_dir: Path, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "workbench", "train", TINY, *RUN, f"train.out_dir={out_dir}"]
    return args + (["--resume"] if resume else [])


def logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if "loss" in record:
            steps.append(record["step"])
    return steps


def run_and_kill_at(out_dir: Path, step: int) -> None:
    """Start (or resume: --resume needs a run to continue) the run and SIGKILL it once it has
    logged ``step``."""
    started = (out_dir / "metrics.jsonl").exists()
    proc = subprocess.Popen(
        command(out_dir, resume=started),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if step in logged_steps(out_dir):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(command(straight, resume=False), check=True, capture_output=True)
    killed = tmp_path / "killed"
    kill_steps = sorted(random.Random(7).sample(range(1, TOTAL_STEPS - 1), 3))
    for step in kill_steps:
        run_and_kill_at(killed, step)
    subprocess.run(command(killed, resume=True), check=True, capture_output=True)
    assert logged_steps(killed)[-1] == TOTAL_STEPS - 1
    a, b = from_pretrained(straight).state_dict(), from_pretrained(killed).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics log has each step once, whatever was cut by the kills
    assert logged_steps(killed) == list(range(TOTAL_STEPS))
