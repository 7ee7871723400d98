"""The app's query inspector: the compact table and its every-column toggle, cell formatting,
muted rows greyed, matches only to ground truth of the query's class, the plot's legend and the
top-K captions. Tiny random models, the page's own adapters (``layout.Events``), no server."""

from __future__ import annotations

import re
from dataclasses import replace

import gradio as gr
import pytest
from test_app import IMAGE, SETTINGS, SHAPES, STAR, payload, tiny

import app
from workbench.app import layout, render
from workbench.app.models import Models
from workbench.types import QueryRecord

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")
EVERY = [*render.COMPACT_COLUMNS, *render.EXTRA_COLUMNS]
NUMBER = re.compile(r"-?\d+(\.\d{2,3})?|\d\.\d\de-\d\d")  # as render.cell_text writes numbers


@pytest.fixture(scope="module")
def models() -> Models:
    return Models.from_predictors(tiny(0), tiny(1))


@pytest.fixture(scope="module")
def page(models):
    """``(ui, events)``: the page's components and its event adapters."""
    with gr.Blocks():
        ui = layout.layout(models, {}, "FiftyOne is not installed")
        events = layout.Events(ui, models, {}, SETTINGS, "FiftyOne is not installed")
    return ui, events


@pytest.fixture(scope="module")
def inspected(page) -> dict:
    """The GRQO model's queries with ground truth (rewards, advantages, KL against SFT), as the
    Inspect button returns them: ``{component: value}``."""
    _, events = page
    truth = str(SHAPES / "annotations.json")
    return events.inspect_queries(None, "grqo", payload(IMAGE, STAR), None, "", truth, 5)


def shown(ui, styler):
    """What gradio sends the browser for the query table: headers, data, display and styling."""
    return ui.queries.postprocess(styler)


def record(rank=0, **fields) -> QueryRecord:
    values = dict(
        rank=rank,
        query_index=rank,
        token_index=rank,
        select_score=1.0 - rank,
        objectness=0.5,
        score=0.5,
        prompt_index=0,
        box_xyxy=(0.0, 0.0, 10.0, 10.0),
    )
    return QueryRecord(**{**values, **fields})


def test_the_table_is_compact_by_default_and_shows_every_column_on_request(page, inspected):
    ui, events = page
    compact = shown(ui, inspected[ui.queries])
    assert compact.headers == list(render.COMPACT_COLUMNS)
    session = inspected[ui.session]
    every = shown(ui, events.query_columns(session, True)[ui.queries])
    assert every.headers == EVERY and len(every.data) == len(compact.data)
    again = shown(ui, events.query_columns(session, False)[ui.queries])
    assert again.headers == compact.headers and again.metadata == compact.metadata
    # Before any inspection the box changes nothing; the next inspection reads it.
    assert events.query_columns(None, True) == {ui.queries: gr.skip()}


def test_rank_is_the_query_index_so_the_table_shows_rank_only(page, inspected):
    ui, _ = page
    records = inspected[ui.session].queries.records
    assert all(r.rank == r.query_index for r in records)
    logits = [r.select_score for r in records]
    assert logits == sorted(logits, reverse=True)


def test_the_column_box_is_an_api_input_that_old_clients_may_omit(models):
    endpoints = app.build_demo(models, settings=SETTINGS).get_api_info()["named_endpoints"]
    toggle = [p["parameter_name"] for p in endpoints["/query_columns"]["parameters"]]
    assert toggle == ["every_column"]
    inspect = {p["parameter_name"]: p for p in endpoints["/inspect_queries"]["parameters"]}
    assert inspect["every_column"]["parameter_has_default"]
    assert inspect["every_column"]["parameter_default"] is False


@pytest.mark.parametrize(
    ("column", "value", "text"),
    [
        ("advantage", -0.0, "0.000"),
        ("reward", -0.0004, "0.000"),
        ("reward", -0.0006, "-0.001"),
        ("select_score", -2.34567, "-2.346"),
        ("score", 0.0042, "0.004"),
        ("iou", 0.456, "0.46"),
        ("kl", 3.1e-5, "3.10e-05"),
        ("kl", 0.0, "0.000"),
        ("kl", 0.25, "0.250"),
        ("muted", True, "yes"),
        ("hungarian", False, "no"),
        ("iou", None, ""),
        ("rank", 7, "7"),
    ],
)
def test_cell_text(column, value, text):
    assert render.cell_text(column, value) == text


def test_no_cell_shows_a_negative_zero_or_long_decimals(page, inspected):
    ui, events = page
    rows = [
        record(0, advantage=-0.0, reward=-1e-5, iou=0.0, kl=0.0, extra={"name": "star"}),
        record(1, advantage=0.5, reward=0.123456, iou=0.5, kl=2e-6, extra={"name": "star"}),
    ]
    small = shown(ui, layout._query_table(*render.table_rows(rows, ["star"], every_column=True)))
    every = shown(ui, events.query_columns(inspected[ui.session], True)[ui.queries])
    for table in (small, every):
        numeric = [
            text
            for row in table.metadata["display_value"]
            for column, text in zip(table.headers, row, strict=True)
            if column not in ("class", "box_xyxy", "matched_gt", "muted", "hungarian")
        ]
        assert numeric and all(NUMBER.fullmatch(text) for text in numeric), numeric
        assert not [t for t in numeric if re.fullmatch(r"-0(\.0*)?(e[-+]\d+)?", t)]
    assert small.metadata["display_value"][0][:4] == ["0", "star", "0.500", "0.00"]


def test_a_match_is_shown_only_to_ground_truth_of_the_querys_class_that_it_overlaps():
    gt_names = ["circle", "star"]
    records = [
        record(0, matched_gt=0, iou=0.4, extra={"name": "star"}),  # another class
        record(1, matched_gt=1, iou=0.0, extra={"name": "star"}),  # no overlap
        record(2, matched_gt=1, iou=0.3, extra={"name": "star"}),
        record(3, matched_gt=0, iou=0.6, extra={"name": "circle"}),
    ]
    headers, rows = render.table_rows(records, gt_names, every_column=True)
    matched = [row[headers.index("matched_gt")] for row in rows]
    assert matched == ["", "", "1: star", "0: circle"]


def test_muted_rows_are_greyed(page, inspected):
    ui, _ = page
    table = shown(ui, inspected[ui.queries])
    muted = [row[table.headers.index("muted")] for row in table.data]
    assert any(muted) and not all(muted)
    for is_muted, styles in zip(muted, table.metadata["styling"], strict=True):
        assert styles == [layout.MUTED_ROW if is_muted else ""] * len(table.headers)


def legend_of(records):
    fig = render.query_figure(records, "title")
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert not [ax for ax in fig.axes if box.overlaps(ax.get_window_extent())]
    assert all("selection logit" in ax.get_xlabel() for ax in fig.axes)
    return [t.get_text() for t in legend.get_texts()]


def test_the_plot_legend_names_every_mark_outside_the_panels(page, inspected):
    ui, _ = page
    records = inspected[ui.session].queries.records
    assert any(r.extra["hungarian"] for r in records)
    assert legend_of(records) == [name for name, _, _ in render.QUERY_MARKS]
    no_truth = [replace(r, reward=None, advantage=None, extra={"name": "star"}) for r in records]
    assert legend_of(no_truth) == ["active query", "muted query (no advantage)"]


def test_top_queries_are_captioned_with_rank_and_class(page, inspected, monkeypatch):
    ui, _ = page
    records = inspected[ui.session].queries.records
    drawn = {}
    monkeypatch.setattr(
        render, "draw_labelled", lambda image, boxes, captions, colors: drawn.update(c=captions)
    )
    render.draw_top_queries(None, records, 3)
    best = sorted(records, key=lambda r: -r.score)[:3]
    assert drawn["c"] == [f"#{r.rank} red solid star {r.score:.2f}" for r in best]
