"""open_clip CLIP models: built from a pretrained tag, a local file, an hf-hub repo or a seeded random init.

Weights are always found on disk first (``weights``): a tag's file in the Hugging Face cache, the
file of ``@PATH``, or an hf-hub repo's cached snapshot. Only when the hub is online and the file is
missing does open_clip download it. The model is built in fp32 on the CPU (so a seed gives the same
weights everywhere), fingerprinted, then moved to the device and converted to the precision.

A tag's release settings are honoured also for ``ARCH.TAG@PATH``: its preprocessing (mean, std,
interpolation, resize mode) and its activation. open_clip only warns when a tag trained with
QuickGELU (e.g. ``ViT-B-32.openai``) is built on a GELU config; here the tag's ``quick_gelu`` is
applied, so the weights run with the activation they were trained with.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import download_pretrained, download_pretrained_from_hf, get_pretrained_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2

from embedstore.errors import ModelError
from embedstore.models import weights as W
from embedstore.models.adapter import PRECISIONS, ModelAdapter
from embedstore.models.failures import library_errors
from embedstore.models.ids import ModelId
from embedstore.models.metadata import openclip_metadata
from embedstore.models.preprocess import from_openclip

#: The files of an open_clip model folder, in open_clip's order of preference
#: (``factory._find_checkpoint_in_dir``), and its config file.
MODEL_DIR_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
MODEL_DIR_CONFIG_FILE = "open_clip_config.json"
#: Keys of a pretrained tag's config that set the preprocessing (``merge_preprocess_dict`` keeps these).
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class OpenClipAdapter(ModelAdapter):
    """A CLIP model of open_clip: image and text towers, tokenizer, logit scale (and bias)."""

    kind = "clip"

    def __init__(self, *, tokenizer: Any, **common: Any) -> None:
        super().__init__(**common)
        self.tokenizer = tokenizer

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``model.encode_image(images, normalize=False)``: the projected image embedding."""
        with torch.inference_mode():
            return self.module.encode_image(self._as_input(images), normalize=False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """open_clip's tokenizer for this model (``open_clip.get_tokenizer``), padded/truncated to its
        context length; a CPU ``LongTensor``."""
        if isinstance(texts, str):
            raise ModelError(f"{self.model_id}: tokenize takes a list of texts, got one string")
        return self.tokenizer(list(texts))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``model.encode_text(tokens, normalize=False)``: the projected text embedding."""
        with torch.inference_mode():
            return self.module.encode_text(tokens.to(self.device), normalize=False)


@dataclass(frozen=True)
class _Located:
    """Where the weights of an id are: what open_clip builds, from which file, and its provenance."""

    model_name: str  # open_clip's model name: the arch, or local-dir:SNAPSHOT for hf-hub repos
    checkpoint: Path | None  # None: random init
    fingerprint: str | None  # None: hash the built random weights
    source: str  # the weights_source metadata field


def load_openclip(spec: ModelId, device: torch.device, precision: str) -> OpenClipAdapter:
    """Build ``spec`` (an ``openclip:`` id) on ``device`` in ``precision``; see the module docstring."""
    located = _locate(spec)
    if located.checkpoint is not None:
        W.check_checkpoint_file(located.checkpoint)
    tag_cfg = get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    with library_errors(f"{spec}: the tokenizer could not be loaded"):
        tokenizer = _tokenizer(located.model_name)
    model = _build(spec, located, tag_cfg)
    model_cfg = open_clip.get_model_config(located.model_name)
    fingerprint = located.fingerprint or W.sha256_state_dict(model, salt=f"{spec}")
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    bias = getattr(model, "logit_bias", None)
    logit_scale = float(model.logit_scale.detach().float().exp())
    logit_bias = float(bias.detach().float()) if bias is not None else None
    params = sum(p.numel() for p in model.visual.parameters())
    preprocess = from_openclip(preprocess_cfg)
    embed_dim = int(model_cfg["embed_dim"])
    model.to(device=device, dtype=PRECISIONS[precision])
    return OpenClipAdapter(
        spec=spec,
        module=model,
        device=device,
        precision=precision,
        preprocess=preprocess,
        pil_transform=image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False),
        embed_dim=embed_dim,
        num_classes=None,
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        fingerprint=fingerprint,
        metadata=openclip_metadata(
            spec,
            model_cfg=model_cfg,
            params=params,
            resolution=preprocess.size[0],
            embed_dim=embed_dim,
            source=located.source,
        ),
        tokenizer=tokenizer,
    )


@functools.lru_cache(maxsize=32)
def _tokenizer(model_name: str) -> Any:
    """open_clip's tokenizer for a model name, built once per process (building one re-reads the BPE
    vocabulary, ~0.2 s); tokenizers hold no per-call state, so models of one name share it."""
    return open_clip.get_tokenizer(model_name)


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Silence open_clip's root-logger warning "No pretrained weights loaded ... initialized randomly":
    random weights were asked for explicitly (``@random``) and are recorded as such in the metadata."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build(spec: ModelId, located: _Located, tag_cfg: dict[str, Any]) -> torch.nn.Module:
    """open_clip.create_model in fp32 on the CPU, seeded, in eval mode."""
    force_preprocess = {k: tag_cfg[k] for k in _TAG_PREPROCESS_KEYS if k in tag_cfg}
    # an absolute path can never be mistaken for a pretrained tag by open_clip
    pretrained = str(located.checkpoint.resolve()) if located.checkpoint and not spec.hf_hub else None
    quiet = _quiet_random_init() if spec.random_seed is not None else contextlib.nullcontext()
    with W.seeded_init(spec.random_seed or 0), library_errors(f"{spec}: open_clip could not build it"), quiet:
        model = open_clip.create_model(
            located.model_name,
            pretrained=pretrained,
            precision="fp32",
            device="cpu",
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=force_preprocess or None,
            pretrained_image=False,
            pretrained_text=False,
            require_pretrained=located.checkpoint is not None,
            weights_only=True,
        )
    return model.eval()


def _locate(spec: ModelId) -> _Located:
    if spec.hf_hub is not None:
        return _locate_hf_repo(spec)
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ModelError(f"{spec}: checkpoint file {path} does not exist")
        return _Located(spec.arch, path, W.sha256_file(path), f"file:{path.resolve()}")
    if spec.random_seed is not None:
        return _Located(spec.arch, None, None, f"random:{spec.random_seed}")
    return _locate_tag(spec)


def _version_salt() -> str:
    return f"open_clip=={open_clip.__version__}"


def _locate_tag(spec: ModelId) -> _Located:
    """A pretrained tag's file in the Hugging Face cache; downloaded only when the hub is online."""
    cfg = get_pretrained_cfg(spec.arch, spec.tag)
    fingerprint = W.sha256_text(f"{spec}|{_version_salt()}")
    repo, filename = os.path.split(cfg.get("hf_hub", "")) if cfg.get("hf_hub") else ("", "")
    filename = filename or HF_WEIGHTS_NAME
    if repo:
        cached = W.cached_hub_file(repo, [*_safe_alternatives(filename), filename])
        if cached is not None:
            return _Located(spec.arch, cached, fingerprint, _hub_source(repo, cached))
    if W.hub_offline():
        if repo:
            raise W.missing_weights_error(str(spec), repo, filename)
        raise ModelError(f"weights of {spec} are not on disk and HF_HUB_OFFLINE is set; download {cfg.get('url')} "
                         f"on a connected machine and load it as {spec}@PATH")  # fmt: skip
    with library_errors(f"{spec}: downloading its weights failed"):
        target = download_pretrained(cfg)
    if not target:
        raise ModelError(f"{spec}: open_clip names no download location for this tag; use @PATH")
    downloaded = Path(target)
    return _Located(spec.arch, downloaded, fingerprint, _hub_source(repo, downloaded) if repo else cfg["url"])


def _locate_hf_repo(spec: ModelId) -> _Located:
    """An open_clip hub repo's cached snapshot (config + weights), loaded as open_clip's ``local-dir:``."""
    repo = spec.hf_hub
    config = W.cached_hub_file(repo, [MODEL_DIR_CONFIG_FILE])
    weights = _first_file(config.parent, MODEL_DIR_WEIGHT_FILES) if config else None
    if config is None or weights is None:
        if W.hub_offline():
            missing = MODEL_DIR_CONFIG_FILE if config is None else MODEL_DIR_WEIGHT_FILES[0]
            raise W.missing_weights_error(str(spec), repo, missing)
        with library_errors(f"{spec}: downloading it failed"):
            config = Path(download_pretrained_from_hf(repo, filename=MODEL_DIR_CONFIG_FILE))
            download_pretrained_from_hf(repo)
        weights = _first_file(config.parent, MODEL_DIR_WEIGHT_FILES)
        if weights is None:
            raise ModelError(
                f"{spec}: the repo has no open_clip weights file ({', '.join(MODEL_DIR_WEIGHT_FILES[:3])})"
            )
    source = _hub_source(repo, weights)
    fingerprint = W.sha256_text(f"{source}|{_version_salt()}")
    return _Located(f"local-dir:{config.parent}", weights, fingerprint, source)


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors names open_clip tries before a pickle file (``pretrained._get_safe_alternatives``)."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors"]
    return []


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _hub_source(repo: str, cached: Path) -> str:
    revision = W.snapshot_revision(cached)
    return f"hf-hub:{repo}/{cached.name}" + (f"@{revision}" if revision else "")
