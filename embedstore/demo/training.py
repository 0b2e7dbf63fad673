"""The demo's three training objectives and the accuracies measured after training, on CPU tensors.

- ``train_contrastive``: CLIP's symmetric InfoNCE over image-caption pairs (``open_clip.loss.ClipLoss``;
  Radford et al. 2021), one caption drawn per image and step; the learned temperature is clamped to
  ``logit_scale <= ln 100`` after each step, as open_clip's training loop does.
- ``train_cross_entropy``: supervised cross-entropy of a classifier's logits (the timm classifier,
  and the fine-tuned CLIP's image tower with its head).

Both use ``fit``: AdamW without weight decay on gains, biases and the logit scale (open_clip's
``main.py`` exclusion rule), linear warm-up then cosine decay to 0 (open_clip's ``cosine_lr``),
batches drawn with replacement from a seeded generator, so a run is a function of its seed.

The CLIP token embedding (49,408 rows, of which the shapes world's captions use about 70) is
trained with sparse gradients and ``torch.optim.SparseAdam`` (lazy Adam: only the rows of the
batch's tokens are updated, without weight decay): a dense AdamW step over all rows costs a third
of a small model's training step on a CPU and changes nothing for rows no caption uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from embedstore.analysis.zeroshot import classifier_weights
from embedstore.demo.shapes_data import ShapesTensors

#: open_clip clamps the learned logit scale to at most 100 (``logit_scale.clamp_(0, ln 100)``).
MAX_LOG_LOGIT_SCALE = math.log(100)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one training run."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1


def learning_rate_factor(step: int, schedule: Schedule) -> float:
    """Multiplier of ``schedule.lr`` at ``step`` (0-based): ``(step + 1) / w`` for the ``w`` warm-up
    steps, then ``0.5 * (1 + cos(pi * (step - w) / (steps - w)))``."""
    warmup = max(1, round(schedule.warmup_fraction * schedule.steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, schedule.steps - warmup)))


def fit(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    schedule: Schedule,
    generator: torch.Generator,
    *,
    sparse: Sequence[torch.nn.Parameter] = (),
    after_step: Callable[[], None] | None = None,
    progress: Progress | None = None,
    label: str = "training",
) -> list[float]:
    """Minimise ``batch_loss(rows)`` over ``schedule.steps`` batches of row indices into ``0..n_rows-1``.

    Parameters in ``sparse`` (they must receive sparse gradients) are updated by ``SparseAdam``, the
    others by AdamW; both follow the same learning-rate schedule. Returns the loss of every step.
    ``progress`` is told about a tenth of the way at a time.
    """
    sparse_ids = {id(p) for p in sparse}
    decay, no_decay = [], []
    for name, parameter in named_parameters:
        if not parameter.requires_grad or id(parameter) in sparse_ids:
            continue
        excluded = parameter.ndim < 2 or "bias" in name or "logit_scale" in name
        (no_decay if excluded else decay).append(parameter)
    betas, eps = (0.9, 0.98), 1e-6
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizers = [torch.optim.AdamW(groups, lr=schedule.lr, betas=betas, eps=eps)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(list(sparse), lr=schedule.lr, betas=betas, eps=eps))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: learning_rate_factor(step, schedule))
                  for o in optimizers]  # fmt: skip
    losses = []
    report_every = max(1, schedule.steps // 10)
    for step in range(schedule.steps):
        rows = torch.randint(0, n_rows, (schedule.batch_size,), generator=generator)
        loss = batch_loss(rows)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if progress is not None and ((step + 1) % report_every == 0 or step + 1 == schedule.steps):
            progress(f"{label}: step {step + 1}/{schedule.steps}, loss {losses[-1]:.3f}")
    return losses


def train_contrastive(
    model: torch.nn.Module,
    data: ShapesTensors,
    tokens: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    progress: Progress | None = None,
) -> list[float]:
    """Train an open_clip CLIP ``model`` in place on image-caption pairs.

    ``tokens`` ``[n, K, L]`` are the tokenised captions of ``data`` (K per image); each step pairs
    every drawn image with one of its K captions, drawn uniformly. The loss is ``ClipLoss`` on the
    normalised embeddings with the model's ``exp(logit_scale)``. The token embedding is trained
    sparsely (module docstring) and left dense again afterwards.
    """
    loss_fn = ClipLoss()
    n_captions = tokens.shape[1]

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        which = torch.randint(0, n_captions, (len(rows),), generator=generator)
        image = model.encode_image(data.pixels[rows].float(), normalize=True)
        text = model.encode_text(tokens[rows, which], normalize=True)
        return loss_fn(image, text, model.logit_scale.exp())

    def clamp_scale() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOG_LOGIT_SCALE)

    embedding = getattr(model, "token_embedding", None)  # CLIP's own text tower (not an HF text tower)
    sparse = [embedding.weight] if isinstance(embedding, torch.nn.Embedding) else []
    model.train()
    if sparse:
        embedding.sparse = True
    try:
        return fit(model.named_parameters(), batch_loss, len(data), schedule, generator, sparse=sparse,
                   after_step=clamp_scale, progress=progress, label="toy CLIP")  # fmt: skip
    finally:
        if sparse:
            embedding.sparse = False
        model.eval()


def train_cross_entropy(
    model: torch.nn.Module,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    data: ShapesTensors,
    schedule: Schedule,
    generator: torch.Generator,
    progress: Progress | None = None,
    label: str = "classifier",
) -> list[float]:
    """Train ``named_parameters`` (of ``model``, put in train mode meanwhile) to minimise the
    cross-entropy of ``logits_of(pixels)`` against ``data.labels``."""
    if data.labels is None:
        raise ValueError(f"{data.spec} has no labels to train a classifier on")

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(data.pixels[rows].float()), data.labels[rows])

    model.train()
    try:
        return fit(named_parameters, batch_loss, len(data), schedule, generator, progress=progress, label=label)
    finally:
        model.eval()


def zero_shot_weights(model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                      classnames: list[str], templates: list[str]) -> torch.Tensor:  # fmt: skip
    """``[C, D]`` zero-shot classifier ``w_c = normalize(mean_t normalize(e_{c,t}))`` of an open_clip
    model (``embedstore.analysis.zeroshot.classifier_weights``, the store's convention)."""
    prompts = [template.format(c=name) for name in classnames for template in templates]
    with torch.inference_mode():
        text = model.encode_text(tokenizer(prompts), normalize=False).float()
    per_class = text.reshape(len(classnames), len(templates), -1).numpy()
    return torch.from_numpy(classifier_weights(per_class))


def top1_accuracy(
    logits_of: Callable[[torch.Tensor], torch.Tensor], data: ShapesTensors, batch_size: int = 128
) -> float:
    """Fraction of ``data``'s images whose highest logit is their label."""
    if data.labels is None:
        raise ValueError(f"{data.spec} has no labels to measure accuracy on")
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            predictions.append(logits_of(data.pixels[start : start + batch_size].float()).argmax(dim=1))
    return float(np.mean((torch.cat(predictions) == data.labels).numpy()))
