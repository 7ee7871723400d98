"""GRQO: Group Relative Query Optimization (docs/method.md), faithful to the release by default.

Loss = SFT losses + sum over decoder layers l of  mean_{b,i}( -alpha * A[l,b,i] + beta * KL[b,i] ):

- reward r[l,b,i] = -min_j C(i, j), query i's best matching cost against any ground truth of image
  b (C = 2 focal + 5 L1 + 2 (-GIoU), the Hungarian cost), kept differentiable; other rewards by
  ``grqo.reward``;
- the group is all matching queries of one image in one layer; A = (r - mean) / (std + eps) with
  the unbiased std; the lowest-ranked ``mute`` queries (queries come in selection order) get
  A = 0. Without muting a standardised group sums to zero and -alpha * mean(A) has no gradient
  (method.md#where-grqos-gradient-comes-from): muting is what makes the term push the top-ranked
  queries' quality up and the bottom ones' down;
- KL[b,i] = k3(p_ref / p) = p_ref/p - log(p_ref/p) - 1 on the sigmoid selection scores (the
  "objectness") of the current model's selected tokens, against a reference model's scores at
  the same tokens, computed without gradient; the same KL enters every layer's term.

Images without ground truth have no reward: their advantages are zero and the advantage mean
runs over the images that have boxes; the KL still covers every image. Every choice above is a
``grqo.*`` config field (see ``GRQOConfig``).

Every ``grqo.grad_norm_every`` steps the gradients of the SFT loss, of the advantage part and of
the KL part are measured apart (norms, cosines with SFT's, shares of SFT's norm): at the released
alpha the advantage part is about 1e-3 of SFT's, so GRQO then trains nearly like SFT plus the KL
term. A run whose advantage share stays below 1 % warns once (``WeakAdvantageWarning``).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from workbench.config import GRQOConfig, LossConfig
from workbench.data.prompts import sample_training_prompts
from workbench.losses import drop_crowd
from workbench.model.backbone import FrozenStem, same_frozen_blocks
from workbench.model.detector import ImageFeatures, unwrap
from workbench.objectives.base import ObjectiveOutput, StepInfo, detach_metrics
from workbench.objectives.sft import DetectorStep, SFTObjective, run_detector
from workbench.rewards import REWARDS, ROWWISE_REWARDS, StepSchedule, group_advantages
from workbench.types import Batch, Target

KL_EPS = 2e-9  # inside the ratio, as released
# Warn when the advantage part's gradient norm is below this share of SFT's ...
LOW_ADVANTAGE_SHARE = 0.01
# ... at this many consecutive measurements (one share below it may be a quiet batch).
LOW_SHARE_MEASUREMENTS = 3


class WeakAdvantageWarning(UserWarning):
    """GRQO's advantage part moves the model far less than the SFT loss (raise ``grqo.alpha``)."""


@dataclass
class GRQOTerms:
    """The GRQO term of each decoder layer ``[L]``, in its two parts."""

    advantage: Tensor  # -alpha * mean(A) (or -alpha * mean(A.detach() * log objectness))
    kl: Tensor  # beta * mean(KL): the same value in every layer

    @property
    def loss(self) -> Tensor:
        """The scalar added to the SFT loss: the sum over layers of both parts."""
        return (self.advantage + self.kl).sum()


def mute_count(cfg: GRQOConfig, num_queries: int) -> int:
    """``grqo.mute``, or a third of the queries (the paper's 300 of 900) when unset."""
    return round(num_queries / 3) if cfg.mute is None else min(cfg.mute, num_queries)


def layer_outputs(outputs: dict) -> list[dict]:
    """The decoder layers' predictions, first to last."""
    return [
        *outputs["aux_outputs"],
        {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
    ]


def query_rewards(outputs: dict, targets: list[Target], reward_fn, loss_cfg: LossConfig) -> Tensor:
    """``[L, B, Q]`` reward of every query of every layer; NaN rows for images without boxes.

    A reward of :data:`~workbench.rewards.ROWWISE_REWARDS` (each query's reward depends on its
    own row only) is computed once per image over all layers' queries stacked, ``[L * Q]`` rows,
    instead of once per image and layer: the same values with ``L`` times fewer calls.
    """
    layers = layer_outputs(outputs)
    logits = torch.stack([layer["pred_logits"] for layer in layers], 1)  # [B, L, Q, U]
    boxes = torch.stack([layer["pred_boxes"] for layer in layers], 1)  # [B, L, Q, 4]

    def per_image(b: int, t: Target) -> Tensor:  # [L, Q]
        if reward_fn in ROWWISE_REWARDS:
            flat = reward_fn(
                logits[b].flatten(0, 1), boxes[b].flatten(0, 1), t.labels, t.boxes_cxcywh, loss_cfg
            )
            return flat.view(boxes.shape[1:3])
        return torch.stack(
            [
                reward_fn(logits[b, k], boxes[b, k], t.labels, t.boxes_cxcywh, loss_cfg)
                for k in range(len(layers))
            ]
        )

    return torch.stack([per_image(b, t) for b, t in enumerate(drop_crowd(targets))], 1)


def k3_kl(select_logits: Tensor, reference_logits: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per query, from selection logits."""
    p = select_logits.sigmoid()
    p_ref = reference_logits.sigmoid()
    ratio = (p_ref + KL_EPS) / (p + KL_EPS)
    # x - log(x) - 1 >= 0 for x > 0; the clamp only removes float rounding around x = 1.
    return (ratio - torch.log(ratio) - 1).clamp_min(0.0)


class GRQOObjective:
    """``(model, batch) -> (loss, metrics)``: SFT losses plus the GRQO terms."""

    def __init__(
        self, loss_cfg: LossConfig, cfg: GRQOConfig, name_embeddings: Tensor | None = None
    ):
        self.loss_cfg, self.cfg = loss_cfg, cfg
        self.sft = SFTObjective(loss_cfg, name_embeddings=name_embeddings)
        self.reference: nn.Module | None = None
        self._pending_reference: dict[str, Tensor] | None = None
        self._low_share_streak, self._warned_low_share = 0, False
        self._schedule = (
            StepSchedule(switch_fraction=cfg.step_switch_fraction)
            if cfg.reward == "vision_r1" and cfg.step_switch_fraction is not None
            else None
        )

    # --- the reference model ----------------------------------------------------------------

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """``epoch_refresh``: the reference becomes a copy of ``model``. ``frozen`` / ``ema``:
        it is made once, from the checkpoint's weights after a resume, else from ``model``."""
        if self.cfg.reference_policy == "epoch_refresh":
            self._copy_reference(model)
        else:
            self._ensure_reference(model)

    def _copy_reference(self, model: nn.Module) -> None:
        self.reference = copy.deepcopy(unwrap(model))
        self.reference.requires_grad_(False)
        self._pending_reference = None

    def _ensure_reference(self, model: nn.Module) -> None:
        """Make the reference if there is none: ``model``'s architecture holding the weights
        restored by ``load_state_dict`` (a resumed run), or a copy of ``model`` (a new one)."""
        if self.reference is not None:
            return
        restored = self._pending_reference
        self._copy_reference(model)
        if restored is not None:
            self.reference.load_state_dict(restored)

    def _reference_for(self, model: nn.Module) -> nn.Module:
        """The reference for one forward pass; an ``ema`` one first moves towards ``model``, at
        every call (so a resumed run makes the same updates as an uninterrupted one)."""
        self._ensure_reference(model)
        if self.cfg.reference_policy == "ema":
            _ema_update(self.reference, unwrap(model), self.cfg.ema_decay)
        self.reference.train(self.cfg.reference_mode == "train")
        return self.reference

    def state_dict(self) -> dict:
        if self.reference is None and self._pending_reference is None:
            return {}
        state = (
            self.reference.state_dict() if self.reference is not None else self._pending_reference
        )
        return {f"reference.{k}": v.detach().cpu() for k, v in state.items()}

    def load_state_dict(self, state: dict) -> None:
        prefix = "reference."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.reference, self._pending_reference = None, weights or None

    # --- the loss ----------------------------------------------------------------------------

    def active(self, info: StepInfo) -> bool:
        return info.epoch >= self.cfg.warmup_epochs and info.step >= self.cfg.warmup_steps

    def reward_fn(self, info: StepInfo):
        fn = REWARDS[self.cfg.reward]
        if self._schedule is not None:
            fn = functools.partial(
                fn, thresholds=self._schedule.thresholds(info.step, info.total_steps)
            )
        return fn

    def reference_logits(
        self, model: nn.Module, batch: Batch, step: DetectorStep, info: StepInfo
    ) -> Tensor:
        """``[B, Q]`` the reference model's selection logits at the policy's selected tokens.

        Runs under ``inference_mode`` and computes the encoder head at those tokens only (see
        ``VisualPromptDetector.selection_logits``); the result is a plain tensor without grad.
        """
        with torch.no_grad():
            reference = self._reference_for(model)
        prompts = step.prompts
        if self.cfg.reference_exemplars == "own":  # a fresh draw of one exemplar per class
            # Seeded from torch's generator, which the trainer reseeds per (run, step, micro-batch).
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            prompts = sample_training_prompts(batch.targets, rng)
        with torch.inference_mode():
            if self.cfg.reference_features == "policy":  # a deviation: the policy's backbone
                features = step.outputs["image_features"].detach()
            else:
                stem = shared_stem(reference, unwrap(model), step.outputs["image_features"])
                features = reference.extract_features(batch.images, batch.pixel_mask, stem)
            classes = reference.encode_prompts(features, prompts.to(batch.images.device)).classes
            scores = reference.selection_logits(features, classes, step.outputs["select_index"])
        return scores.clone()  # an inference tensor cannot enter the policy's autograd graph

    def grqo_terms(
        self, model, batch, step: DetectorStep, info: StepInfo
    ) -> tuple[GRQOTerms, dict]:
        """Both parts of every layer's GRQO term, and diagnostics (``extras``: the ``[L, B, Q]``
        rewards and advantages and the ``[B, Q]`` KL)."""
        out, cfg = step.outputs, self.cfg
        rewards = query_rewards(out, step.targets, self.reward_fn(info), self.loss_cfg)  # [L,B,Q]
        q = rewards.shape[-1]
        advantages = group_advantages(rewards, mute_count(cfg, q), cfg.std_eps, cfg.unbiased_std)
        has_gt = torch.isfinite(rewards[0]).all(-1)  # [B]
        images = max(int(has_gt.sum()), 1)
        if cfg.advantage_mode == "policy_gradient":
            log_objectness = nn.functional.logsigmoid(out["select_logits"])[None]
            weighted = advantages.detach() * log_objectness
        else:
            weighted = advantages
        adv_term = -cfg.alpha * weighted[:, has_gt].sum((1, 2)) / (images * q)  # [L]
        kl = torch.zeros_like(out["select_logits"])
        if cfg.kl and cfg.beta > 0:
            kl = k3_kl(out["select_logits"], self.reference_logits(model, batch, step, info))
        terms = GRQOTerms(adv_term, (cfg.beta * kl.mean()).expand_as(adv_term))
        metrics = _diagnostics(rewards, advantages, kl, has_gt, terms.advantage + terms.kl)
        return terms, metrics | {"extras": (rewards, advantages, kl)}

    def __call__(self, model: nn.Module, batch: Batch, info: StepInfo) -> ObjectiveOutput:
        align = self.sft.cfg.align_weight > 0 and batch.prompts.num_prompts > 0
        step = run_detector(model, batch, with_instances=align)
        sft_loss, terms = self.sft.detection_losses(step, info)
        metrics = detach_metrics(terms)
        if align:
            loss_align = self.sft.alignment(model, step, batch)
            sft_loss = sft_loss + self.sft.cfg.align_weight * loss_align
            metrics["loss_align"] = float(loss_align.detach())
        metrics["num_prompts"] = float(step.prompts.num_prompts)
        if not self.active(info) or int(step.prompts.labels.min()) < 0:
            return ObjectiveOutput(sft_loss, metrics | {"grqo_active": 0.0}, {"step": step})
        terms, diag = self.grqo_terms(model, batch, step, info)
        grqo_loss = terms.loss
        extras = {"step": step, "rewards": diag.pop("extras")}
        metrics |= diag | {"loss_grqo": float(grqo_loss.detach()), "grqo_active": 1.0}
        if self.measures_gradients(info):
            shares = gradient_shares(model, sft_loss, terms)
            metrics |= shares
            if shares:
                self._watch_advantage_share(shares["grad_share_adv"], info)
        return ObjectiveOutput(sft_loss + grqo_loss, metrics, extras)

    # --- gradient shares ---------------------------------------------------------------------

    def measures_gradients(self, info: StepInfo) -> bool:
        """Every ``grad_norm_every`` steps, on the step's first micro-batch (one per step): the
        last step of each block of ``grad_norm_every``, a step the trainer logs whenever
        ``train.log_every`` divides ``grad_norm_every`` (otherwise the next logged line carries
        the measurement)."""
        every = self.cfg.grad_norm_every
        return every > 0 and (info.step + 1) % every == 0 and info.micro_batch == 0

    def _watch_advantage_share(self, share: float, info: StepInfo) -> None:
        """Warn, once per objective (one run), when the advantage part's share of the SFT
        gradient norm was below ``LOW_ADVANTAGE_SHARE`` at ``LOW_SHARE_MEASUREMENTS``
        consecutive measurements."""
        self._low_share_streak = self._low_share_streak + 1 if share < LOW_ADVANTAGE_SHARE else 0
        if self._warned_low_share or self._low_share_streak < LOW_SHARE_MEASUREMENTS:
            return
        self._warned_low_share = True
        warnings.warn(
            f"GRQO's advantage term has a gradient norm of {share:.1e} times the SFT loss's at "
            f"step {info.step} (below {LOW_ADVANTAGE_SHARE:g} at {self._low_share_streak} "
            "measurements in a row), so GRQO trains nearly like SFT plus the KL term. Its weight "
            f"is grqo.alpha={self.cfg.alpha:g}: raise grqo.alpha for the term to matter.",
            WeakAdvantageWarning,
            stacklevel=3,
        )


def _diagnostics(
    rewards: Tensor, advantages: Tensor, kl: Tensor, has_gt: Tensor, layers: Tensor
) -> dict:
    """TRL-style diagnostics: reward mean / std per layer, advantage spread, the share of groups
    with zero reward spread, KL, each layer's GRQO term."""
    metrics: dict[str, float] = {
        "kl_mean": float(kl.detach().mean()),
        "kl_max": float(kl.detach().max()),
    }
    valid = rewards.detach()[:, has_gt]  # [L, B', Q]
    for layer in range(rewards.shape[0]):
        r = valid[layer]
        if r.numel():
            metrics[f"reward_mean_{layer}"] = float(r.mean())
            metrics[f"reward_std_{layer}"] = float(r.std(-1).mean()) if r.shape[-1] > 1 else 0.0
        metrics[f"loss_grqo_{layer}"] = float(layers[layer].detach())
    if valid.numel():
        spread = valid.amax(-1) - valid.amin(-1)
        metrics["zero_spread_share"] = float((spread == 0).float().mean())
        adv = advantages.detach()[:, has_gt]
        metrics["advantage_abs_mean"] = float(adv.abs().mean())
        metrics["advantage_max"] = float(adv.max())
        metrics["advantage_min"] = float(adv.min())
    metrics["images_with_reward"] = float(has_gt.sum())
    return metrics


def gradient_shares(model: nn.Module, sft_loss: Tensor, terms: GRQOTerms) -> dict[str, float]:
    """How much each part of the loss moves the model, from its own gradient over all trainable
    parameters: ``g_sft``, ``g_adv`` (of ``terms.advantage.sum()``) and ``g_kl``.

    Returns the L2 norms ``grad_norm_{sft,adv,kl,grqo}`` (``grqo``: of ``g_adv + g_kl``, the
    whole GRQO term), the cosines ``grad_cos_{adv,kl}_sft`` with ``g_sft`` and the shares
    ``grad_share_{adv,kl}`` = norm / ``grad_norm_sft`` (NaN where a norm divided by is 0).
    Three extra backward passes through the retained graph, holding three gradient copies;
    ``{}`` under DistributedDataParallel, whose hooks expect one backward per step.
    """
    if hasattr(model, "module"):
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    sft, adv, kl = (
        _grads(loss, params) for loss in (sft_loss, terms.advantage.sum(), terms.kl.sum())
    )
    norm_sft, norm_adv, norm_kl = (math.sqrt(_dot(g, g)) for g in (sft, adv, kl))
    norm_grqo = math.sqrt(max(norm_adv**2 + norm_kl**2 + 2 * _dot(adv, kl), 0.0))
    return {
        "grad_norm_sft": norm_sft,
        "grad_norm_adv": norm_adv,
        "grad_norm_kl": norm_kl,
        "grad_norm_grqo": norm_grqo,
        "grad_cos_adv_sft": _ratio(_dot(adv, sft), norm_adv * norm_sft),
        "grad_cos_kl_sft": _ratio(_dot(kl, sft), norm_kl * norm_sft),
        "grad_share_adv": _ratio(norm_adv, norm_sft),
        "grad_share_kl": _ratio(norm_kl, norm_sft),
    }


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor | None]:
    """``d loss / d p`` for each of ``params``; None where ``loss`` does not reach ``p``."""
    if not loss.requires_grad:  # e.g. the KL part with grqo.beta = 0
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def _dot(a: list[Tensor | None], b: list[Tensor | None]) -> float:
    """Sum over parameters of ``<a_p, b_p>``, accumulated in float64; None counts as zero."""
    return sum(
        float((x.double() * y.double()).sum())
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def shared_stem(
    reference: nn.Module, model: nn.Module, features: ImageFeatures
) -> FrozenStem | None:
    """The policy's output of its frozen backbone blocks (``train.frozen_backbone_blocks``) when
    the reference holds the same weights there, so the reference continues from it and the
    result is the same bits as its own; otherwise None."""
    stem = features.stem
    if stem is None:
        return None
    same = same_frozen_blocks(
        reference.model.backbone.conv_encoder, model.model.backbone.conv_encoder, stem.blocks
    )
    return stem if same else None


@torch.no_grad()
def _ema_update(reference: nn.Module, model: nn.Module, decay: float) -> None:
    for ref, cur in zip(reference.parameters(), model.parameters(), strict=True):
        if cur.requires_grad:  # a frozen weight is its own average, kept to the bit
            ref.mul_(decay).add_(cur.detach(), alpha=1 - decay)
