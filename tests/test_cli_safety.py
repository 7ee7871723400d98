"""Lose nothing: no command replaces a user's file without the flag that allows it (never its own
input), and every mistake is one line on stderr with status 2. Commands run in-process
(``workbench.cli.main``), as ``python -m workbench`` runs them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image
from testing_constants import QUICK_SHAPES, TINY

from workbench import checkpoint as ckpt
from workbench.cli import main
from workbench.data import sources
from workbench.model.build import build_detector, save_pretrained

QUICK = [*QUICK_SHAPES, "train.eval_every_epochs=0", "train.max_steps=2"]
BOX = "--box=10,10,40,40:thing"


def cli(capsys, *args) -> tuple[int, str]:
    """Run ``python -m workbench ARGS`` in this process: (status, stderr)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as done:  # argparse's own exits
        status = done.code
    return status, capsys.readouterr().err


def one_error(capsys, *args) -> str:
    """The command fails with status 2 and one line of stderr (after the progress bars of a run
    that got that far), no traceback; that line."""
    status, err = cli(capsys, *args)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and err.rstrip().endswith(lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its content's hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train(capsys, out_dir, *extra) -> tuple[int, str]:
    return cli(capsys, "train", TINY, *QUICK, f"train.out_dir={out_dir}", *extra)


# --- training into a folder that holds a run ---------------------------------------------------


def test_train_never_replaces_a_run_unless_resumed_or_moved_aside(tmp_path, capsys):
    run = tmp_path / "run"
    status, err = train(capsys, run)
    assert status == 0, err
    before = snapshot(run)
    assert {"config.yaml", "metrics.jsonl", "checkpoints/step_000000002/model.safetensors"} <= set(
        before
    )
    # The README's ablation example, repeated into the same folder: refused, nothing touched.
    line = one_error(capsys, "train", TINY, *QUICK, f"train.out_dir={run}", "train.lr=1e-3")
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert snapshot(run) == before
    # A changed hyper-parameter on --resume: refused with the difference, nothing touched.
    line = one_error(
        capsys, "train", TINY, *QUICK, f"train.out_dir={run}", "train.lr=1e-3", "--resume"
    )
    assert "train.lr: 0.0002 -> 0.001" in line and "--allow-changes" in line
    assert snapshot(run) == before
    # --allow-changes needs --resume; --resume needs a run (a typo must not start a new one).
    assert "add --resume" in one_error(capsys, "train", TINY, *QUICK, "--allow-changes")
    line = one_error(capsys, "train", TINY, *QUICK, f"train.out_dir={tmp_path / 'rnu'}", "--resume")
    assert "does not exist" in line and not (tmp_path / "rnu").exists()
    (tmp_path / "empty").mkdir()
    assert "holds no run" in one_error(
        capsys, "train", TINY, *QUICK, f"train.out_dir={tmp_path / 'empty'}", "--resume"
    )
    # A longer run with the same settings continues it.
    status, err = train(capsys, run, "train.max_steps=3", "--resume")
    assert status == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    assert ckpt.find_latest(run).name == "step_000000003"
    # --overwrite moves the old run aside whole, and starts anew.
    continued = snapshot(run)
    status, err = train(capsys, run, "--overwrite")
    assert status == 0, err
    assert snapshot(tmp_path / "run.old-1") == continued
    assert ckpt.find_latest(run).name == "step_000000002"


def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_model", full)
    line = one_error(capsys, "train", TINY, *QUICK, f"train.out_dir={tmp_path / 'run'}")
    assert "after step 2 could not be written" in line and "No space left on device" in line
    assert "none was written before" in line and "--resume" in line
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_an_unwritable_output_folder_is_one_line_naming_the_setting(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if "readonly" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    line = one_error(capsys, "train", TINY, *QUICK, f"train.out_dir={tmp_path / 'readonly'}")
    assert "train.out_dir=" in line and "Read-only file system" in line and "writable" in line


def test_a_diverging_run_ends_in_the_nonfinite_guard(tmp_path, capsys):
    line = one_error(
        capsys,
        "train",
        TINY,
        *QUICK,
        f"train.out_dir={tmp_path / 'run'}",
        "train.lr=1e30",
        "train.max_steps=20",
    )
    assert "NaN/inf at 5 consecutive steps" in line and "Lower train.lr" in line


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.max_steps=-5", "train.max_steps must be >= 1"),
        ("train.max_steps=0", "train.max_steps must be >= 1"),
        ("train.lr=.inf", "train.lr must be a finite number > 0"),
        ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
        ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 1"),
        ("grqo.std_eps=0", "grqo.std_eps must be > 0"),
        ("model.dn_number=-2", "model.dn_number must be >= 0"),
        ("eval.max_images=-3", "eval.max_images must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("model.size=huge", "model.size='huge' is not a known size"),
        ("train.device=foo", "train.device must be auto, cpu, cuda"),
        ("train.device=cuda:7", "train.device=cuda:7 is not available"),
        ("data.shapes_train_images=3", "fewer than one global batch"),
    ],
)
def test_every_wrong_setting_is_one_line_naming_it(tmp_path, capsys, setting, message):
    line = one_error(capsys, "train", TINY, *QUICK, f"train.out_dir={tmp_path / 'run'}", setting)
    assert message in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_training_set_without_a_usable_box_is_an_error(tmp_path, capsys):
    Image.new("RGB", (96, 96), "white").save(tmp_path / "a.png")
    data = {
        "images": [{"id": i, "file_name": "a.png", "width": 96, "height": 96} for i in range(1, 9)],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    line = one_error(
        capsys,
        "train",
        TINY,
        *QUICK,
        f"train.out_dir={tmp_path / 'run'}",
        "data.name=coco_json",
        f"data.train_json={tmp_path / 'train.json'}",
        f"data.val_json={tmp_path / 'train.json'}",
    )
    assert "has no usable box" in line


# --- predict, eval, show: --out -----------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return save_pretrained(build_detector("tiny"), tmp_path_factory.mktemp("model") / "tiny")


def test_predict_never_writes_over_its_input_and_treats_folders_as_folders(
    tmp_path, capsys, detector
):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "photo.png")
    image = (tmp_path / "photo.png").read_bytes()
    common = ["predict", detector, tmp_path / "photo.png", BOX, "--min-size", 64]
    # --out equal to the image's stem would write photo.png over the input: never, even forced.
    for force in ([], ["--force"]):
        line = one_error(capsys, *common, "--out", tmp_path / "photo", *force)
        assert "is the input file" in line
    assert (tmp_path / "photo.png").read_bytes() == image
    # A trailing / or an existing folder means "write IMAGE_STEM.* inside it".
    status, err = cli(capsys, *common, "--out", f"{tmp_path / 'new'}/")
    assert status == 0, err
    assert {p.name for p in (tmp_path / "new").iterdir()} == {"photo.json", "photo.png"}
    assert not (tmp_path / "new.json").exists()
    (tmp_path / "existing").mkdir()
    assert cli(capsys, *common, "--out", tmp_path / "existing")[0] == 0
    assert (tmp_path / "existing" / "photo.json").is_file()
    # Outputs that exist are replaced only with --force.
    first = snapshot(tmp_path / "new")
    line = one_error(capsys, *common, "--out", f"{tmp_path / 'new'}/")
    assert "already exists; pass --force" in line and snapshot(tmp_path / "new") == first
    assert cli(capsys, *common, "--out", f"{tmp_path / 'new'}/", "--force")[0] == 0
    # Sizes that make no sense are one line, before the model is read.
    assert "--min-size" in one_error(capsys, *common[:-2], "--min-size", 0, "--out", tmp_path / "x")
    assert "below --min-size" in one_error(
        capsys, *common, "--max-size", 32, "--out", tmp_path / "x"
    )


def test_eval_and_show_outputs_that_exist_need_force(tmp_path, capsys):
    kept = tmp_path / "results.json"
    kept.write_text("mine")
    line = one_error(capsys, "eval", tmp_path / "no-run", "--out", kept)
    assert "results.json already exists; pass --force" in line and kept.read_text() == "mine"
    Image.new("RGB", (40, 30), "white").save(tmp_path / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    picture = tmp_path / "grid.png"
    picture.write_bytes(b"my picture")
    assert "pass --force" in one_error(
        capsys, "data", "show", tmp_path / "a.json", "--out", picture
    )
    assert picture.read_bytes() == b"my picture"
    assert cli(capsys, "data", "show", tmp_path / "a.json", "--out", picture, "--force")[0] == 0
    assert picture.read_bytes().startswith(b"\x89PNG")


# --- data commands ------------------------------------------------------------------------------


def test_make_shapes_never_overwrites_a_dataset_without_force(tmp_path, capsys):
    out = tmp_path / "shapes"
    made = cli(capsys, "data", "make-shapes", "--out", out, "--images", 2, "--image-size", 128)
    assert made[0] == 0, made[1]
    mine = out / "annotations.json"
    mine.write_text('{"mine": true}')
    line = one_error(capsys, "data", "make-shapes", "--out", out, "--images", 2)
    assert "annotations.json" in line and "--force" in line and mine.read_text() == '{"mine": true}'
    assert cli(capsys, "data", "make-shapes", "--out", out, "--images", 2, "--force")[0] == 0
    assert "images" in json.loads(mine.read_text())
    assert "--images" in one_error(capsys, "data", "make-shapes", "--out", out, "--images", 0)
    line = one_error(capsys, "data", "make-shapes", "--out", tmp_path / "s", "--image-size", 64)
    assert "object_size" in line  # the default object sizes do not fit a 64 px image


def _voc_folder(root: Path) -> Path:
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (60, 40), "white").save(root / "JPEGImages" / "img1.jpg")
    (root / "Annotations" / "img1.xml").write_text(
        "<annotation><filename>img1.jpg</filename><size><width>60</width><height>40</height>"
        "</size><object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>"
    )
    return root


def test_convert_voc_never_overwrites_and_writes_with_the_users_umask(tmp_path, capsys):
    voc, out = _voc_folder(tmp_path / "voc"), tmp_path / "coco"
    old = os.umask(0o022)
    try:
        assert cli(capsys, "data", "convert-voc", voc, "--out", out)[0] == 0
    finally:
        os.umask(old)
    assert (out / "annotations.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    (out / "annotations.json").write_text("mine")
    line = one_error(capsys, "data", "convert-voc", voc, "--out", out)
    assert "annotations.json" in line and "--force" in line
    assert (out / "annotations.json").read_text() == "mine"
    assert cli(capsys, "data", "convert-voc", voc, "--out", out, "--force")[0] == 0
    assert json.loads((out / "annotations.json").read_text())["images"]


def test_fetch_never_replaces_same_named_folders_without_force(tmp_path, capsys, monkeypatch):
    import zipfile

    from workbench.data.download import Download

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
        zf.writestr("set/val.json", json.dumps(data))
    src = sources.Source(
        "local",
        "a local archive",
        "test",
        "WORKBENCH_LOCAL_TEST",
        {"val": ("set/val.json", "set")},
        downloads=(Download(archive.as_uri(), "set.zip"),),
    )
    monkeypatch.setitem(sources.SOURCES, "local", src)
    root = tmp_path / "mine"
    (root / "set").mkdir(parents=True)
    (root / "set" / "notes.txt").write_text("my notes")
    line = one_error(capsys, "data", "fetch", "local", "--root", root)
    assert "would replace" in line and "set" in line and "--force" in line
    assert (root / "set" / "notes.txt").read_text() == "my notes"
    assert cli(capsys, "data", "fetch", "local", "--root", root, "--force")[0] == 0
    assert (root / "set" / "val.json").is_file()
    # Fetched: a second fetch refuses too, naming the dataset's files.
    assert "already in" in one_error(capsys, "data", "fetch", "local", "--root", root)


def test_usage_mistakes_are_one_line(capsys):
    assert "invalid choice" in one_error(capsys, "trian")
    assert "--threshold" in one_error(
        capsys, "predict", "m", "i.png", BOX, "--out", "o", "--threshold", 2
    )
