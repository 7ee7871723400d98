"""Prompt banks: class embeddings saved once and applied to any image.

A bank holds, for each prompt (class), the mean of its exemplar boxes' embeddings, as the visual
prompt encoder computed them on the exemplars' own images (DINO-R1's "generic visual prompt",
docs/method.md#evaluation-protocols). Applying a bank needs neither the exemplar images nor their
boxes.

File format: one ``.safetensors`` file. Tensor ``embeddings`` ``[U, d]`` float32; header metadata
(strings) ``format = "workbench-prompt-bank/1"``, ``name``, ``model_fingerprint``, and ``prompts``,
a JSON list of ``{name, prompt_id, label, negative, num_exemplars}``, one per row. Loading reads
safetensors and JSON only; a pickle or ``torch.save`` file is refused before anything parses it.

Embeddings are specific to the weights that produced them: ``model_fingerprint`` (a hash of the
prompt encoder's learned query) lets the Predictor warn when a bank meets another checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from workbench.types import VisualPrompt

FORMAT = "workbench-prompt-bank/1"
SUFFIX = ".safetensors"


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the prompt encoder's learned query: changes whenever training moves it."""
    content = model.model.prompt_encoder.content.weight.detach().float().cpu()
    return hashlib.sha256(content.numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptBank:
    """Class embeddings of ``U`` prompts, ready to search any image for.

    Attributes:
        embeddings: ``[U, d]`` float32, one class embedding per prompt (mean over its exemplars).
        names: ``U`` display names.
        prompt_ids: ``U`` prompt ids (``VisualPrompt.prompt_id``).
        labels: ``U`` dataset labels, ``None`` for user prompts.
        negative: ``U`` flags: negative prompts compete for queries but are never reported.
        num_exemplars: ``U`` how many boxes were averaged into each embedding.
        model_fingerprint: :func:`model_fingerprint` of the model that embedded them.
        name: the bank's display name.
    """

    embeddings: Tensor
    names: tuple[str, ...]
    prompt_ids: tuple[int, ...]
    labels: tuple[int | None, ...]
    negative: tuple[bool, ...]
    num_exemplars: tuple[int, ...]
    model_fingerprint: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        u = len(self.names)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != u:
            raise ValueError(f"PromptBank.embeddings must be [{u}, d], got {self.embeddings.shape}")
        for field_name in ("prompt_ids", "labels", "negative", "num_exemplars"):
            if len(getattr(self, field_name)) != u:
                raise ValueError(f"PromptBank.{field_name} needs {u} entries (one per prompt)")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_exemplar_embeddings(
        cls,
        prompts: Sequence[VisualPrompt],
        exemplar_embeddings: Sequence[Tensor],
        model_fingerprint: str = "",
        name: str = "",
    ) -> PromptBank:
        """Average each prompt's ``[E_u, d]`` exemplar embeddings into its class embedding."""
        classes = torch.stack([e.float().mean(0) for e in exemplar_embeddings])
        return cls(
            embeddings=classes,
            names=tuple(p.name for p in prompts),
            prompt_ids=tuple(int(p.prompt_id) for p in prompts),
            labels=tuple(p.label for p in prompts),
            negative=tuple(bool(p.negative) for p in prompts),
            num_exemplars=tuple(int(e.shape[0]) for e in exemplar_embeddings),
            model_fingerprint=model_fingerprint,
            name=name,
        )

    @classmethod
    def concat(cls, banks: Sequence[PromptBank], name: str = "") -> PromptBank:
        """One bank holding the prompts of ``banks`` in order (e.g. a saved bank + new boxes)."""
        if not banks:
            raise ValueError("PromptBank.concat needs at least one bank")
        prints = {b.model_fingerprint for b in banks if b.model_fingerprint}
        device = banks[0].embeddings.device
        return cls(
            embeddings=torch.cat([b.embeddings.to(device) for b in banks]),
            names=sum((b.names for b in banks), ()),
            prompt_ids=sum((b.prompt_ids for b in banks), ()),
            labels=sum((b.labels for b in banks), ()),
            negative=sum((b.negative for b in banks), ()),
            num_exemplars=sum((b.num_exemplars for b in banks), ()),
            model_fingerprint=prints.pop() if len(prints) == 1 else "",
            name=name or banks[0].name,
        )

    def select(self, indices: Sequence[int]) -> PromptBank:
        """The prompts at ``indices``, in that order."""
        rows = [int(i) for i in indices]
        pick = lambda values: tuple(values[i] for i in rows)  # noqa: E731
        return PromptBank(
            embeddings=self.embeddings[rows],
            names=pick(self.names),
            prompt_ids=pick(self.prompt_ids),
            labels=pick(self.labels),
            negative=pick(self.negative),
            num_exemplars=pick(self.num_exemplars),
            model_fingerprint=self.model_fingerprint,
            name=self.name,
        )

    def records(self) -> list[dict]:
        """JSON-ready description of each prompt (everything but the embeddings)."""
        return [
            {"name": n, "prompt_id": i, "label": lab, "negative": neg, "num_exemplars": k}
            for n, i, lab, neg, k in zip(
                self.names,
                self.prompt_ids,
                self.labels,
                self.negative,
                self.num_exemplars,
                strict=True,
            )
        ]

    def save(self, path: str | Path) -> Path:
        """Write the bank to ``path`` (``.safetensors`` is appended if missing), atomically."""
        path = Path(path)
        if path.suffix != SUFFIX:
            path = path.with_name(path.name + SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "name": self.name,
            "prompts": json.dumps(self.records()),
            "model_fingerprint": self.model_fingerprint,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        embeddings = self.embeddings.detach().float().cpu().contiguous().clone()
        save_file({"embeddings": embeddings}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> PromptBank:
        """Read a bank written by :meth:`save`; never unpickles."""
        path = Path(path)
        _refuse_non_safetensors(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ValueError(
                        f"{path} is a safetensors file but not a prompt bank (format "
                        f"{metadata.get('format')!r}, expected {FORMAT!r})"
                    )
                embeddings = f.get_tensor("embeddings")
            prompts = json.loads(metadata["prompts"])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path} is damaged or not a prompt bank ({err}); save it again"
            ) from err
        return cls(
            embeddings=embeddings.to(device),
            names=tuple(str(p["name"]) for p in prompts),
            prompt_ids=tuple(int(p["prompt_id"]) for p in prompts),
            labels=tuple(None if p["label"] is None else int(p["label"]) for p in prompts),
            negative=tuple(bool(p["negative"]) for p in prompts),
            num_exemplars=tuple(int(p["num_exemplars"]) for p in prompts),
            model_fingerprint=metadata.get("model_fingerprint", ""),
            name=metadata.get("name", ""),
        )


def _refuse_non_safetensors(path: Path) -> None:
    """Look at the first bytes only. A safetensors file starts with its header length (8 bytes,
    little-endian) and the header's ``{``; pickles (opcode 0x80) and torch zips ("PK") are named
    as such. (The length's first byte may itself be 0x80, so the safetensors test comes first.)"""
    if not path.is_file():
        raise FileNotFoundError(f"prompt bank {path} not found")
    with path.open("rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ValueError(
            f"{path} is a pickle / torch.save file, which can run arbitrary code when loaded; "
            "prompt banks are safetensors files written by PromptBank.save"
        )
    raise ValueError(f"{path} is truncated or not a safetensors prompt bank")
