"""The app's default models are what models/defaults.json says they are.

The float16 weights in models/ are re-evaluated on the bundled held-out examples and must give
the recorded AP within TOLERANCE: the same weights and images give the same AP up to float
rounding in the CPU kernels of another machine (a box whose IoU sits at a threshold could flip).
"""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "models" / "defaults.json"
TOLERANCE = 0.01


def test_default_models_fit_the_size_budget():
    record = json.loads(RECORD.read_text())
    assert sum(m["size_mb"] for m in record["models"].values()) <= 25
    for key in ("sft", "grqo"):
        files = sum(f.stat().st_size for f in (REPO / "models" / key).iterdir()) / 2**20
        assert files == pytest.approx(record["models"][key]["size_mb"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sft", "grqo"])
def test_default_models_reproduce_their_recorded_ap(key):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from default_models import evaluate_examples

    from workbench.predictor import Predictor

    record = json.loads(RECORD.read_text())
    predictor = Predictor.from_checkpoint(
        REPO / "models" / key, device="cpu", **record["resolution"]
    )
    measured = evaluate_examples(predictor)
    expected = record["models"][key]["examples"]
    assert measured.keys() == expected.keys()
    for name, stats in expected.items():
        for metric, value in stats.items():
            assert measured[name][metric] == pytest.approx(value, abs=TOLERANCE), (name, metric)
    # meaningful detections: both domains are found under the interactive protocol
    assert (
        measured["shapes/interactive"]["AP50"] > 0.5 and measured["bccd/interactive"]["AP50"] > 0.5
    )


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sft", "grqo"])
def test_default_models_predict_at_the_size_they_were_trained_at(key, tmp_path, capsys):
    """Without size flags, the Predictor and `workbench predict` resize as the default models
    were trained (256/342 px, recorded in their checkpoints), not at the 800/1333 px fallback."""
    from workbench.cli import main
    from workbench.data.images import read_image
    from workbench.postprocess import SCORE_THRESHOLD, shown_detections
    from workbench.predictor import Predictor
    from workbench.types import Exemplar, VisualPrompt

    folder = REPO / "models" / key
    trained = json.loads(RECORD.read_text())["resolution"]
    predictor = Predictor.from_checkpoint(folder, device="cpu")
    assert (predictor.min_size, predictor.max_size) == (trained["min_size"], trained["max_size"])
    assert predictor.run_config.train.objective == key

    image_path = REPO / "examples" / "bccd" / "images" / "BloodImage_00021.jpg"  # 640x480
    box = (374.0, 102.0, 422.0, 146.0)  # one of its RBC
    argv = ["predict", str(folder), str(image_path), "--box", ",".join(map(str, box)) + ":RBC"]
    assert main([*argv, "--out", str(tmp_path / "cells")]) == 0
    assert f"at {trained['min_size']}/{trained['max_size']} px" in capsys.readouterr().out
    written = json.loads((tmp_path / "cells.json").read_text())

    image = read_image(image_path)
    prompts = [VisualPrompt("RBC", (Exemplar(box),))]
    raw = predictor.predict(image, prompts, score_threshold=SCORE_THRESHOLD)
    expected = shown_detections(raw)  # one box per object: duplicates merged
    assert 0 < len(expected) < len(raw)
    assert [r["score"] for r in written] == pytest.approx(expected.scores.tolist(), abs=1e-5)
    boxes = [v for r in written for v in r["box_xyxy"]]
    assert boxes == pytest.approx(expected.boxes_xyxy.flatten().tolist(), abs=0.01)
    # the fallback size sees another image: the recorded size is what made these detections
    large = Predictor.from_checkpoint(folder, device="cpu", min_size=800, max_size=1333)
    other = large.predict(image, prompts, score_threshold=SCORE_THRESHOLD)
    assert other.scores.tolist() != pytest.approx(expected.scores.tolist(), abs=1e-3)
