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
