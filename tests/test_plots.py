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


def test_live_metrics_redraw_while_the_job_runs_and_return_its_result(tmp_path):
    import threading

    logged = threading.Event()

    def job():  # logs one line, waits until a figure has shown it, logs a second line
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 2.0}) + "\n")
        assert logged.wait(10)
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n")
        return {"global_step": 2}

    shown = []

    def show(fig):
        shown.append([line.get_ydata().tolist() for line in fig.axes[0].lines])
        if shown[-1] == [[2.0]]:
            logged.set()

    result = plots.run_with_live_metrics(job, tmp_path, {"loss": ["loss"]}, show, every_s=0.01)
    assert result == {"global_step": 2}
    assert [[2.0]] in shown and shown[-1] == [[2.0, 1.0]]  # the last figure shows the whole run


def test_live_metrics_reraise_the_jobs_error_after_the_last_figure(tmp_path):
    def job():
        raise RuntimeError("diverged")

    shown = []
    with pytest.raises(RuntimeError, match="diverged"):
        plots.run_with_live_metrics(job, tmp_path, {"loss": ["loss"]}, shown.append, every_s=5)
    assert len(shown) == 1  # the last figure, drawn as soon as the job stopped


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


def _detection(box, label="RBC", confidence=0.9):
    from types import SimpleNamespace

    return SimpleNamespace(bounding_box=box, label=label, confidence=confidence)


def test_fiftyone_boxes_are_relative_top_left_xywh():
    boxes = plots.fiftyone_boxes_xyxy([_detection([0.25, 0.5, 0.5, 0.25])], 200, 100)
    assert boxes == [[50.0, 50.0, 150.0, 75.0]]


def test_merged_into_keeps_close_same_label_raw_boxes_above_the_score():
    keeper = _detection([0.1, 0.1, 0.4, 0.4])
    close = _detection([0.11, 0.1, 0.4, 0.4], confidence=0.3)  # IoU about 0.95
    raw = [
        keeper,  # the keeper itself: IoU 1, not a duplicate of itself
        close,
        _detection([0.11, 0.1, 0.4, 0.4], confidence=0.1),  # below the score
        _detection([0.11, 0.1, 0.4, 0.4], label="WBC"),  # another class
        _detection([0.3, 0.3, 0.4, 0.4]),  # too far (IoU about 0.29)
    ]
    assert plots.merged_into(raw, [keeper], iou_above=0.7, min_score=0.2) == [close]
    assert plots.merged_into(raw, [], iou_above=0.7, min_score=0.2) == []


def test_fiftyone_sample_figure_draws_the_emphasised_field_thick_with_a_legend():
    from PIL import Image

    layers = {"ground_truth": [_detection([0.1, 0.1, 0.3, 0.3])], "sft": [_detection([0.5] * 4)]}
    colors = {"ground_truth": "#2ecc40", "sft": "#ff851b"}
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    fig = plots.plot_fiftyone_sample(image, layers, colors, emphasis="sft", title="a case")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ground_truth", "sft"]
    assert [line.get_linewidth() for line in legend.get_lines()] == [1, 3]
    drawn = fig.axes[0].get_images()[0].get_array()
    assert tuple(drawn[10, 20][:3]) == (0x2E, 0xCC, 0x40)  # the ground-truth box's top edge
    assert tuple(drawn[50, 70][:3]) == (0xFF, 0x85, 0x1B)  # the emphasised box's top edge


def test_query_selection_gives_each_prompt_its_colour_a_legend_outside_and_a_colour_bar():
    fig = plots.plot_query_selection(
        torch.zeros(3, 64, 64),
        torch.randn(20, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 5, 16, 19]),  # two tokens of each of the two levels
        [(4, 4), (2, 2)],
        torch.tensor([0, 1, 2, 0]),  # the prompt each selected token matches best
        ["a", "b", "c"],
    )
    image_axes = fig.axes[0]
    colours = [tuple(c.get_facecolor()[0][:3]) for c in image_axes.collections]
    assert len(set(colours)) == 3  # one colour per prompt, none shared
    fig.canvas.draw()
    legend = image_axes.get_legend().get_window_extent()
    assert legend.y1 <= image_axes.get_window_extent().y0  # under the image, hiding nothing
    assert len(fig.axes) == 1 + 2 + 1  # image, one heatmap per level, the colour bar


def test_layer_iou_figure_draws_each_query_and_the_mean_over_queries():
    ious = torch.tensor([[0.5, 0.7, 0.9], [0.6, 0.7, 0.8]])  # [stages, queries]
    red, blue = (230, 25, 75), (0, 130, 200)
    fig = plots.plot_layer_ious(
        ious, ["proposals", "layer 0"], ["q0", "q1", "q2"], [red, red, blue]
    )
    *queries, mean = fig.axes[0].lines
    assert np.array([line.get_ydata() for line in queries]) == pytest.approx(ious.T.numpy())
    assert mean.get_ydata().tolist() == pytest.approx([0.7, 0.7])
    assert queries[0].get_linestyle() != queries[1].get_linestyle()  # same prompt colour


def test_drawings_take_one_colour_per_prompt():
    from workbench import viz
    from workbench.types import Detections, Target

    image = torch.zeros(3, 40, 40)
    detections = Detections(
        boxes_xyxy=torch.tensor([[5.0, 5.0, 30.0, 30.0]]),
        scores=torch.tensor([0.9]),
        prompt_index=torch.tensor([1]),
        names=("b",),
        image_size=(40, 40),
    )
    colours = [(10, 200, 10), (200, 10, 200)]
    assert viz.draw_detections(image, detections, colours).getpixel((5, 20)) == colours[1]
    target = Target(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), torch.tensor([7]), 0, (40, 40), (40, 40))
    assert viz.draw_target(image, target, colors={7: colours[0]}).getpixel((10, 20)) == colours[0]
