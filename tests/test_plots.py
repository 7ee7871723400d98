"""The notebooks' figure helpers: token geometry, metrics files, and what the figures show."""

import json

import matplotlib
import numpy as np
import pytest
import torch

from workbench import plots

matplotlib.use("Agg")


def test_token_centres_walk_the_levels_row_major():
    shapes = [(4, 4), (2, 2)]  # 16 + 4 tokens over a 64 x 64 input: strides 16 and 32
    level, xy = plots.token_centres(torch.tensor([0, 5, 15, 16, 19]), shapes, (64, 64))
    assert level.tolist() == [0, 0, 0, 1, 1]
    assert xy.tolist() == [[8, 8], [24, 24], [56, 56], [16, 16], [48, 48]]


def test_token_centres_of_a_wide_input_scale_each_axis():
    level, xy = plots.token_centres(torch.tensor([3, 4]), [(2, 4)], (32, 64))
    assert level.tolist() == [0, 0]
    assert xy.tolist() == [[56, 8], [8, 24]]  # last cell of row 0, first of row 1


def test_read_metrics_skips_a_half_written_last_line(tmp_path):
    lines = [json.dumps({"step": 0, "loss": 2.0}), json.dumps({"step": 1, "loss": 1.5}), '{"st']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert [r["loss"] for r in plots.read_metrics(tmp_path)] == [2.0, 1.5]
    assert plots.read_metrics(tmp_path / "not_yet") == []


def test_plot_metrics_draws_only_the_metrics_a_run_logged():
    records = [{"step": 0, "loss": 2.0, "kl_mean": None}, {"step": 1, "loss": 1.0}]
    fig = plots.plot_metrics(records, {"loss": ["loss"], "kl": ["kl_mean", "absent"]})
    loss_axes, kl_axes = fig.axes
    assert [line.get_ydata().tolist() for line in loss_axes.lines] == [[2.0, 1.0]]
    assert len(kl_axes.lines) == 0


def test_cost_figure_total_is_the_weighted_sum_of_its_terms():
    terms = {"cost_class": torch.rand(5, 3), "cost_bbox": torch.rand(5, 3)}
    weights = {"cost_class": 2.0, "cost_bbox": 5.0}
    fig = plots.plot_cost_terms(terms, weights)
    total = fig.axes[0].images[0].get_array()
    expected = 2 * terms["cost_class"] + 5 * terms["cost_bbox"]
    assert np.asarray(total) == pytest.approx(expected.numpy(), abs=1e-6)


def test_embedding_projection_separates_two_clusters_on_the_first_component():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-5, 0.1, (10, 8)), rng.normal(5, 0.1, (10, 8))])
    fig = plots.plot_embeddings_2d(torch.tensor(points), {"class": ["a"] * 10 + ["b"] * 10})
    first, second = (c.get_offsets()[:, 0] for c in fig.axes[0].collections)
    assert first.max() < second.min() or second.max() < first.min()


def test_png_bytes_of_an_image_and_of_a_figure_decode_to_their_sizes():
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    image = Image.new("RGB", (40, 30), (10, 20, 30))
    decoded = Image.open(io.BytesIO(plots.png_bytes(image)))
    assert decoded.size == (40, 30) and decoded.getpixel((5, 5)) == (10, 20, 30)
    fig = plt.figure(figsize=(2, 1))
    assert Image.open(io.BytesIO(plots.png_bytes(fig, dpi=50))).size == (100, 50)
    assert not plt.fignum_exists(fig.number)  # closed, so the notebook does not draw it twice
