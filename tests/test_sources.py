import hashlib
import json
import zipfile

import pytest
import torch

from workbench.data import sources
from workbench.data.dataset import DatasetError
from workbench.data.download import Download
from workbench.data.sources import Source, data_root, fetch, get_source, locate


def coco_json(n_images=2):
    return {
        "images": [
            {"id": i, "file_name": f"img{i}.png", "width": 10, "height": 10}
            for i in range(n_images)
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }


def test_unknown_names_get_a_suggestion():
    with pytest.raises(DatasetError, match="did you mean 'bccd'"):
        get_source("bcd")
    with pytest.raises(DatasetError, match="did you mean 'odinw/Aquarium'"):
        get_source("odinw/Aquarim")
    assert get_source("odinw/pothole").splits["valid"] == ("valid/_annotations.coco.json", "valid")


def test_missing_data_says_where_it_looked_and_how_to_get_it(monkeypatch):
    monkeypatch.delenv("WORKBENCH_COCO", raising=False)
    with pytest.raises(DatasetError, match=r"WORKBENCH_COCO.*data fetch coco"):
        locate("coco", "val")
    with pytest.raises(DatasetError, match="no split 'tset'"):
        locate("bccd", "tset")
    with pytest.raises(DatasetError, match="make-shapes"):
        locate("shapes", "train")


def test_resolution_order_root_then_env_then_cache(tmp_path, monkeypatch):
    rel = "annotations/instances_val2017.json"
    for name in ("root", "env", "cache"):
        (tmp_path / name / rel).parent.mkdir(parents=True)
        (tmp_path / name / rel).write_text("{}")
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "cache_parent"))
    (data_root() / "coco" / rel).parent.mkdir(parents=True)
    (data_root() / "coco" / rel).write_text("{}")
    monkeypatch.setenv("WORKBENCH_COCO", str(tmp_path / "env"))
    assert locate("coco", "val", root=tmp_path / "root").json_path == tmp_path / "root" / rel
    assert locate("coco", "val").json_path == tmp_path / "env" / rel
    monkeypatch.delenv("WORKBENCH_COCO")
    assert locate("coco", "val").json_path == data_root() / "coco" / rel


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def local_source(archive, md5=None):
    return Source(
        name="local",
        description="a local test archive",
        licence="test",
        env_var="WORKBENCH_LOCAL_TEST",
        splits={"val": ("set/val.json", "set")},
        downloads=(Download(archive.as_uri(), "set.zip", md5=md5),),
    )


def test_fetch_verifies_and_unpacks_a_published_archive(tmp_path, monkeypatch):
    archive = make_zip(
        tmp_path / "set.zip", {"set/val.json": json.dumps(coco_json()), "set/img0.png": b"x"}
    )
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    src = local_source(archive, md5)
    monkeypatch.setitem(sources.SOURCES, "local", src)
    found = locate("local", "val", download=True, progress=False)
    assert found.json_path == data_root() / "local" / "set" / "val.json"
    assert json.loads(found.json_path.read_text())["categories"][0]["name"] == "thing"
    assert (found.image_root / "img0.png").read_bytes() == b"x"
    assert not list((data_root() / "local").glob(".unpack-*"))  # no staging left behind


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path):
    archive = make_zip(tmp_path / "set.zip", {"set/val.json": "{}"})
    dest = tmp_path / "dest"
    with pytest.raises(DatasetError, match="does not match its published checksum"):
        fetch(local_source(archive, md5="0" * 32), dest, progress=False)
    assert not (dest / "downloads" / "set.zip").exists()
    assert not list((dest / "downloads").glob("*.part"))


def test_archives_that_escape_their_folder_are_refused(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"../../escaped.txt": "x"})
    with pytest.raises(DatasetError, match="points outside the archive"):
        fetch(local_source(archive), tmp_path / "dest", progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_unreachable_urls_fail_with_a_clear_error(tmp_path):
    src = Source(
        "x", "", "", "X", {}, downloads=(Download((tmp_path / "nope.zip").as_uri(), "nope.zip"),)
    )
    with pytest.raises(DatasetError, match="could not download"):
        fetch(src, tmp_path / "dest", progress=False)


def test_a_local_bccd_copy_is_converted_into_the_cache_once(bccd_voc, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BCCD", str(bccd_voc))
    found = locate("bccd", "train", progress=False)
    assert found.json_path == data_root() / "bccd" / "train.json"
    assert len(json.loads(found.json_path.read_text())["images"]) == 205
    stamp = found.json_path.stat().st_mtime_ns
    assert locate("bccd", "test").json_path.parent == found.json_path.parent
    assert found.json_path.stat().st_mtime_ns == stamp  # the second call reuses the conversion


def test_open_dataset_follows_the_data_config(tmp_path, bccd_voc, monkeypatch):
    from workbench.config import DataConfig
    from workbench.data.sources import open_dataset

    cfg = DataConfig(
        name="shapes", shapes_train_images=6, shapes_val_images=4, shapes_image_size=128
    )
    train, val = open_dataset(cfg, "train"), open_dataset(cfg, "val")
    assert (len(train), len(val)) == (6, 4)
    novel = {c.label for c in train.categories if c.split == "novel"}
    assert novel and not any(i.label in novel for i in train.instances())  # base-only training
    assert not torch.equal(train.load_image(0), val.load_image(0))

    monkeypatch.setenv("WORKBENCH_BCCD", str(bccd_voc))
    bccd = open_dataset(DataConfig(name="bccd"), "val")
    assert len(bccd) == 87 and [c.name for c in bccd.categories] == ["Platelets", "RBC", "WBC"]

    with pytest.raises(DatasetError, match=r"data\.val_json"):
        open_dataset(DataConfig(name="coco_json"), "val")


def test_a_mixture_keeps_categories_and_ids_apart(bccd_voc, monkeypatch):
    from workbench.config import DataConfig
    from workbench.data.mixture import ID_STRIDE
    from workbench.data.sources import open_dataset

    monkeypatch.setenv("WORKBENCH_BCCD", str(bccd_voc))
    cfg = DataConfig(name="shapes+bccd", shapes_train_images=3, shapes_val_images=2)
    mix = open_dataset(cfg, "val")
    assert len(mix) == 2 + 87
    names = [c.name for c in mix.categories]
    assert names[-3:] == ["Platelets", "RBC", "WBC"] and len(names) == 48 + 3
    assert [c.label for c in mix.categories] == list(range(51))
    assert len({c.id for c in mix.categories}) == 51
    _, target = mix[2]  # the first BCCD image
    assert target.image_id > ID_STRIDE and int(target.labels.min()) >= 48
    assert mix.target(2).labels.tolist() == target.labels.tolist()
    labels = {i.label for i in mix.instances() if i.image_index >= 2}
    assert labels <= {48, 49, 50}
    pool = open_dataset(cfg, "prompts")  # shapes' own pool, BCCD's train split
    assert len(pool) == 2 + 205
