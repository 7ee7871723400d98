"""Property: the command line answers any wrong setting or argument with one line on stderr and
status 2, never a traceback, and changes no file (the run folders included).

Commands run in-process (``workbench.cli.main``), in a workspace holding what a user has: a
config, an image, results, a dataset json, a saved detector and a finished run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from testing_constants import QUICK_SHAPES, TINY

from workbench.cli import main
from workbench.config import load_config
from workbench.experiment import train
from workbench.model.build import build_detector, save_pretrained

QUICK = [*QUICK_SHAPES, "train.eval_every_epochs=0", "train.max_steps=1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    Image.new("RGB", (64, 48), "white").save(root / "photo.png")
    (root / "results.json").write_text('{"mine": true}')
    data = {
        "images": [{"id": 1, "file_name": "photo.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "a.json").write_text(json.dumps(data))
    save_pretrained(build_detector("tiny"), root / "model")
    train(load_config(TINY, [*QUICK, f"train.out_dir={root / 'run'}"]))
    return root


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- bad settings of `train` --------------------------------------------------------------------

AT_LEAST_ONE = [
    "train.max_steps",
    "train.epochs",
    "train.batch_size",
    "train.log_every",
    "train.max_nonfinite_streak",
    "eval.max_images",
    "eval.exemplars_per_class",
    "data.min_size",
    "data.shapes_train_images",
    "data.shapes_val_images",
    "model.num_queries",
]
AT_LEAST_ZERO = [
    "train.warmup_steps",
    "train.keep_checkpoints",
    "train.checkpoint_every",
    "train.seed",
    "train.eval_every_epochs",
    "train.frozen_backbone_blocks",
    "data.num_workers",
    "model.dn_number",
    "grqo.mute",
    "grqo.warmup_steps",
    "grqo.warmup_epochs",
    "eval.exemplar_draws",
    "eval.seed",
    "grqo.grad_norm_every",
]
NON_NEGATIVE = [
    "train.weight_decay",
    "train.backbone_lr_mult",
    "train.clip_grad_norm",
    "loss.cost_class",
    "loss.loss_bbox",
    "loss.focal_gamma",
    "grqo.alpha",
    "grqo.beta",
    "data.min_box_size",
]
UNIT = [
    "data.hflip_prob",
    "data.crop_prob",
    "loss.focal_alpha",
    "train.warmup_factor",
    "grqo.step_switch_fraction",
]
NOT_FINITE = st.sampled_from([".inf", "-.inf", ".nan", "1e999"])
WORDS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
# Words no setting, category set, dataset or command is called, and YAML reads as a string.
UNKNOWN = WORDS.map("zz{}".format)


def _float(x: float) -> str:
    return repr(x) if math.isfinite(x) else {math.inf: ".inf", -math.inf: "-.inf"}.get(x, ".nan")


bad_settings = st.one_of(
    st.builds("{}={}".format, st.sampled_from(AT_LEAST_ONE), st.integers(-(10**6), 0)),
    st.builds("{}={}".format, st.sampled_from(AT_LEAST_ZERO), st.integers(-(10**6), -1)),
    st.builds(
        "{}={}".format,
        st.sampled_from(NON_NEGATIVE),
        st.floats(max_value=-1e-9, allow_nan=False).map(_float) | NOT_FINITE,
    ),
    st.builds(
        "{}={}".format,
        st.sampled_from(UNIT),
        st.floats(min_value=1.0001, allow_infinity=False).map(_float)
        | st.floats(max_value=-1e-9, allow_infinity=False).map(_float),
    ),
    st.builds(
        "train.lr={}".format, st.floats(max_value=0, allow_nan=False).map(_float) | NOT_FINITE
    ),
    st.builds("grqo.std_eps={}".format, st.floats(max_value=0).map(_float) | NOT_FINITE),
    st.builds("grqo.ema_decay={}".format, st.sampled_from(["0", "1", "-2", "1.5", ".nan"])),
    st.builds("model.size={}".format, WORDS.filter(lambda w: w not in {"tiny", "small"})),
    st.builds(
        "train.device={}".format,
        WORDS.filter(lambda w: w not in {"auto", "cpu", "cuda", "mps"})
        | st.integers(1, 64).map("cuda:{}".format),
    ),
    st.builds("train.{}={}".format, st.sampled_from(["objective", "amp"]), UNKNOWN),
    st.builds(
        "{}.{}=1".format, st.sampled_from(["train", "data", "eval", "model", "grqo"]), UNKNOWN
    ),
    st.builds("{}={}".format, st.sampled_from(AT_LEAST_ONE + NON_NEGATIVE), UNKNOWN),
    st.builds("train.batch_size={}".format, st.integers(17, 64)),  # more than the 16 images
    st.just("data.name=coco_json"),  # without data.train_json
    st.just("train.batch_size=3"),  # not a multiple of grad_accum=2
)


@st.composite
def train_commands(draw, root: Path) -> list[str]:
    run = draw(st.sampled_from(["run", "fresh"]))  # the finished run, or a folder to create
    settings_ = draw(st.lists(bad_settings, min_size=1, max_size=3))
    if "train.batch_size=3" in settings_:
        settings_.append("train.grad_accum=2")
    flags = draw(
        st.sampled_from(
            [
                [],
                ["--resume"],
                ["--overwrite"],
                ["--resume", "--overwrite"],
                ["--resume", "--allow-changes"],
            ]
        )
    )
    return ["train", TINY, *QUICK, f"train.out_dir={root / run}", *settings_, *flags]


# --- bad arguments of the other commands --------------------------------------------------------


@st.composite
def other_commands(draw, root: Path) -> list[str]:
    photo, model, box = str(root / "photo.png"), str(root / "model"), "--box=5,5,30,30:thing"
    predict = ["predict", model, photo]
    return draw(
        st.sampled_from(
            [
                [
                    *predict,
                    box,
                    "--out",
                    str(root / "photo"),
                ],  # would write photo.png over the input
                [*predict, box, "--out", str(root / "photo"), "--force"],
                [*predict, box, "--out", str(root / "results")],  # results.json exists
                [
                    *predict,
                    box,
                    "--out",
                    str(root / "o"),
                    "--min-size",
                    str(draw(st.integers(-99, 0))),
                ],
                [*predict, box, "--out", str(root / "o"), "--max-size", "8"],
                [
                    *predict,
                    box,
                    "--out",
                    str(root / "o"),
                    "--threshold",
                    draw(st.sampled_from(["-0.1", "1.5", "nan", "high"])),
                ],
                [*predict, f"--box={draw(UNKNOWN)}", "--out", str(root / "o")],
                [*predict[:2], str(root / "missing.png"), box, "--out", str(root / "o")],
                [*predict[:2], str(root / "a.json"), box, "--out", str(root / "o")],  # not an image
                ["predict", str(root / "nomodel"), photo, box, "--out", str(root / "o")],
                ["eval", str(root / "run"), "--out", str(root / "results.json")],
                ["eval", str(root / "run"), "eval.max_images=0"],
                [
                    "data",
                    "make-shapes",
                    "--out",
                    str(root / "shapes"),
                    "--images",
                    str(draw(st.integers(-5, 0))),
                ],
                [
                    "data",
                    "make-shapes",
                    "--out",
                    str(root / "shapes"),
                    "--image-size",
                    str(draw(st.integers(1, 60))),
                ],
                [
                    "data",
                    "make-shapes",
                    "--out",
                    str(root / "shapes"),
                    "--categories",
                    draw(UNKNOWN),
                ],
                ["data", "show", str(root / "a.json"), "--out", str(root / "results.json")],
                [
                    "data",
                    "show",
                    str(root / "a.json"),
                    "--out",
                    str(root / "g.png"),
                    "--count",
                    "0",
                ],
                [
                    "data",
                    "show",
                    str(root / "a.json"),
                    "--out",
                    str(root / "g.png"),
                    "--index",
                    "7",
                ],
                ["data", "convert-voc", str(root / "novoc"), "--out", str(root / "coco")],
                ["data", "convert-yolo", str(root / "noyolo"), "--out", str(root / "coco")],
                ["data", "convert-yolo", str(root), "--out", str(root / "coco")],  # no names
                [
                    "data",
                    "split",
                    str(root / "a.json"),
                    "--out",
                    str(root),
                    "--val",
                    draw(st.sampled_from(["1", "-0.1", "nan", "0.9", "most"])),
                    "--test",
                    "0.5",
                ],
                ["data", "split", str(root / "a.json"), "--out", str(root)],  # 1 image: too few
                ["data", "stats", str(root / "missing.json")],
                ["data", "fetch", draw(UNKNOWN)],
                [draw(UNKNOWN | st.sampled_from(["data", "train", "eval", "predict", "fiftyone"]))],
                ["train"],
                ["train", str(root / "nothere.yaml")],
            ]
        )
    )


def run_in_process(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as done:
            status = done.code
    return status, err.getvalue()


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_settings_and_arguments_are_one_line_and_change_no_file(workspace, data):
    commands = train_commands(workspace) | other_commands(workspace)
    argv = data.draw(commands, label="argv")
    before, threads = snapshot(workspace), torch.get_num_threads()
    with contextlib.chdir(workspace):  # a stray relative path would land here, and be seen
        status, err = run_in_process(argv)
    torch.set_num_threads(threads)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert snapshot(workspace) == before
    assert not (workspace / "run.old-1").exists()  # --overwrite moved nothing
