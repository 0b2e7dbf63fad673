"""Fine-tuned CLIP models: an open_clip image tower with a linear classifier head, from one file.

Id: ``openclip-classifier:ARCH[.TAG]@PATH``. ``ARCH`` (and ``TAG``, which as for ``openclip:ARCH.TAG@PATH``
only selects the release's preprocessing) name the open_clip model the file was fine-tuned from.

The file is a torch checkpoint, a dict of tensors only (``torch.load(..., weights_only=True)``)::

    {"state_dict": <the open_clip CLIP state_dict>,       # loaded by open_clip, as for openclip:ARCH@PATH
     "classifier_head": {"weight": [C, D], "bias": [C]}}  # D = the model's embed_dim

open_clip reads ``state_dict`` and ignores the other key, so the file also loads as
``openclip:ARCH@PATH`` (the CLIP model it holds, text tower included).

The head follows WiSE-FT's ``ClassificationHead(normalize=True)`` (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022): logits ``= weight @ normalize(f) + bias`` with ``f`` the
projected image embedding (``encode_image(x, normalize=False)``), so a head initialised with
``logit_scale * W_zeroshot`` and zero bias gives the zero-shot classifier's logits. ``encode_image``
returns ``f`` unnormalised (as every adapter returns what the encoder returns); ``classify``
normalises, so ``classify(encode_image(x))`` is the fine-tuned model's output.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from embedstore.errors import ModelError
from embedstore.models.adapter import PRECISIONS, ModelAdapter
from embedstore.models.ids import ModelId
from embedstore.models.metadata import FINE_TUNED_CLIP
from embedstore.models.openclip_adapter import load_openclip

#: Key of the head in the checkpoint dict (the CLIP weights are under open_clip's ``state_dict``).
HEAD_KEY = "classifier_head"


class OpenClipClassifierAdapter(ModelAdapter):
    """A CLIP image tower with a linear head: ``encode_image`` gives the projected image embedding,
    ``classify`` the head's logits on its L2-normalised form."""

    kind = "classifier"

    def __init__(self, *, head: torch.nn.Linear, **common: Any) -> None:
        super().__init__(**common)
        self.head = head

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``model.encode_image(images, normalize=False)``: the projected image embedding."""
        with torch.inference_mode():
            return self.module.encode_image(self._as_input(images), normalize=False)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``head.weight @ normalize(features) + head.bias``: ``[B, num_classes]`` logits."""
        with torch.inference_mode():
            return self.head(F.normalize(features.to(device=self.device, dtype=self.dtype), dim=-1))


def save_openclip_classifier(path: Path, clip_state_dict: dict[str, torch.Tensor], head: torch.nn.Linear) -> None:
    """Write the file format of this module: the CLIP ``state_dict`` and the head's weight and bias."""
    torch.save(
        {
            "state_dict": {name: t.detach().cpu() for name, t in clip_state_dict.items()},
            HEAD_KEY: {"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()},
        },
        path,
    )


def load_openclip_classifier(spec: ModelId, device: torch.device, precision: str) -> OpenClipClassifierAdapter:
    """Build ``spec`` (an ``openclip-classifier:`` id): the CLIP model through ``load_openclip`` (same
    checks, preprocessing and fingerprint: the file's sha256), then the head from the same file.

    Metadata: the CLIP model's, with ``group`` "fine-tuned CLIP" (a CLIP image tower under a trained
    head) and ``params`` counting the head too. Raises ``ModelError`` when the file has no head or a
    head whose width is not the model's ``embed_dim``.
    """
    path = Path(spec.path).expanduser()
    if path.suffix.lower() in (".safetensors", ".npz", ".npy"):
        raise ModelError(f"{spec}: an openclip-classifier file is a torch checkpoint (torch.save), not {path.suffix}")
    clip = load_openclip(replace(spec, library="openclip"), device, precision)
    head = _read_head(path, clip.embed_dim)
    head.to(device=device, dtype=PRECISIONS[precision]).eval()
    num_classes = head.out_features
    metadata = dict(
        clip.metadata, group=FINE_TUNED_CLIP, params=clip.metadata["params"] + head.weight.numel() + num_classes
    )
    return OpenClipClassifierAdapter(
        spec=spec,
        module=clip.module,
        device=device,
        precision=precision,
        preprocess=clip.preprocess,
        pil_transform=clip.pil_transform,
        embed_dim=clip.embed_dim,
        num_classes=num_classes,
        logit_scale=None,
        logit_bias=None,
        fingerprint=clip.fingerprint,
        metadata=metadata,
        head=head,
    )


def _read_head(path: Path, embed_dim: int) -> torch.nn.Linear:
    """The ``classifier_head`` of the checkpoint as a ``Linear(embed_dim, C)`` in fp32 on the CPU.
    The file already passed ``weights.check_checkpoint_file`` (tensors only) inside ``load_openclip``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    entry = checkpoint.get(HEAD_KEY) if isinstance(checkpoint, dict) else None
    weight = entry.get("weight") if isinstance(entry, dict) else None
    bias = entry.get("bias") if isinstance(entry, dict) else None
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ModelError(
            f"checkpoint {path} has no {HEAD_KEY!r} with a 'weight' and a 'bias' tensor; "
            f"an openclip-classifier file is {{'state_dict': ..., {HEAD_KEY!r}: {{'weight': [C, D], 'bias': [C]}}}}"
        )
    if weight.ndim != 2 or weight.shape[1] != embed_dim or bias.shape != (weight.shape[0],):
        raise ModelError(
            f"checkpoint {path}: {HEAD_KEY} weight {list(weight.shape)} and bias {list(bias.shape)} do not fit "
            f"embed_dim {embed_dim} (expected weight [C, {embed_dim}] and bias [C])"
        )
    head = torch.nn.Linear(embed_dim, weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head
