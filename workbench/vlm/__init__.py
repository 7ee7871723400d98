"""Vision-R1's criteria rewards for vision-language models that write boxes as text.

Not part of the detector's training path (GRQO's per-query Vision-R1 reward is
:func:`workbench.rewards.vision_r1_query_reward`): :mod:`~workbench.vlm.rewards` scores a
completion such as ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, ...]`` against ground truth,
and :mod:`~workbench.vlm.trl` wraps those scores as reward functions for TRL's ``GRPOTrainer``.
"""
