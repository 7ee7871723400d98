"""One switch for the speed-ups that change no result beyond float rounding.

On by default: the fused deformable-attention CPU kernel (``deformable.py``) and the sampling
locations computed on flattened rows (``deformable.FastMultiscaleDeformableAttention``),
channels-last convolutions in the MobileNetV2 backbone, and GRQO's reference forward stopped at
the selected tokens (``VisualPromptDetector.selection_logits`` with ``index``).
``WORKBENCH_FAST=0`` in the environment, or :func:`disabled` in code, runs the plain path instead,
e.g. to check that both give the same losses (tests/test_fastpath.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_enabled = os.environ.get("WORKBENCH_FAST", "1") != "0"


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the plain (slower, reference) path inside the block."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
