import re

import pytest
import yaml

from workbench.config import (
    Config,
    ConfigError,
    diff_from_defaults,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg == Config()


def test_yaml_lists_only_differences(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  lr: 3.0e-4\n  batch_size: 2\ndata:\n  name: bccd\n")
    )
    assert cfg.train.lr == 3e-4 and cfg.train.batch_size == 2 and cfg.data.name == "bccd"
    assert cfg.train.epochs == Config().train.epochs  # untouched fields keep their defaults
    assert diff_from_defaults(cfg) == {
        "data": {"name": "bccd"},
        "train": {"batch_size": 2, "lr": 3e-4},
    }


def test_dotted_overrides_beat_the_file_and_are_typed(tmp_path):
    path = write(tmp_path, "train:\n  lr: 3.0e-4\n")
    cfg = load_config(path, ["train.lr=1e-4", "train.epochs=3", "data.train_scales=[224, 256]"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.data.train_scales == (224, 256)


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*did you mean 'lr'"):
        load_config(None, ["train.lrr=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  lr: 1\n"))
    with pytest.raises(ConfigError, match=r"exp\.yaml"):
        load_config(write(tmp_path, "model:\n  sise: tiny\n"))


def test_wrong_types_and_choices_are_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size='four' must be of type int"):
        load_config(None, ["train.batch_size=four"])
    with pytest.raises(ConfigError, match=r"train\.objective='ppo' is not allowed.*sft"):
        load_config(None, ["train.objective=ppo"])
    with pytest.raises(ConfigError, match=r"data\.hflip_prob must lie in \[0, 1\]"):
        load_config(None, ["data.hflip_prob=1.5"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["train.lr.x=1"])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    assert load_config(write(tmp_path, "")) == Config()


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train.lr=2e-4", "data.name=bccd", "model.num_queries=50"])
    full = load_config(save_config(cfg, tmp_path / "full.yaml"))
    short = load_config(save_config(cfg, tmp_path / "short.yaml", full=False))
    assert full == cfg and short == cfg
    assert yaml.safe_load((tmp_path / "short.yaml").read_text()) == diff_from_defaults(cfg)
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_optional_fields_accept_null():
    cfg = load_config(None, ["model.num_queries=20", "model.num_queries=null"])
    assert cfg.model.num_queries is None


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.out_dir.startswith("runs/"), path


@pytest.mark.parametrize(
    "override",
    [
        "train.max_steps=-5",
        "train.max_steps=0",
        "train.lr=.inf",
        "train.lr=.nan",
        "train.weight_decay=-1e-4",
        "train.warmup_steps=-1",
        "train.keep_checkpoints=-1",
        "train.log_every=0",
        "train.seed=-1",
        "train.device=foo",
        "train.device=cuda:x",
        "train.lr_drop_factor=0",
        "grqo.std_eps=0",
        "grqo.std_eps=-1e-9",
        "grqo.alpha=.inf",
        "grqo.warmup_steps=-1",
        "grqo.step_switch_fraction=2",
        "model.dn_number=-1",
        "model.num_queries=0",
        "eval.max_images=-3",
        "eval.max_images=0",
        "data.num_workers=-1",
        "data.shapes_train_images=0",
        "data.shapes_image_size=8",
        "data.min_box_size=-1",
        "data.shapes_object_size=[40, 20]",
        "loss.focal_gamma=-1",
        "loss.cost_bbox=.inf",
    ],
)
def test_values_out_of_range_are_refused_naming_the_key_and_the_value(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} .*\(got "):
        load_config(None, [override])


def test_the_edges_of_the_ranges_are_accepted():
    edges = [
        "train.max_steps=1",
        "train.keep_checkpoints=0",
        "train.device=cuda:1",
        "grqo.std_eps=1e-12",
        "eval.max_images=1",
        "model.dn_number=0",
    ]
    cfg = load_config(None, edges)
    assert cfg.train.max_steps == 1 and cfg.train.keep_checkpoints == 0
