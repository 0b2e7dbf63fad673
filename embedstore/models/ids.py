"""Model ids: the one parser from text such as ``openclip:ViT-B-32.openai`` to a ``ModelId``.

Grammar (``ARCH.TAG`` as timm writes names; the first ``@`` separates the weights source)::

    openclip:ARCH.TAG              pretrained tag of open_clip.list_pretrained()
    openclip:ARCH[.TAG]@PATH       local checkpoint file; TAG, when given, names what the file holds
                                   (its preprocessing, quick_gelu and metadata come from the tag)
    openclip:ARCH[.TAG]@random     random weights, seed 0; @random:SEED for another seed
    openclip:hf-hub:ORG/REPO       an open_clip repo on the Hugging Face hub (config + weights)
    timm:NAME[.TAG]                pretrained timm weights; without TAG, timm's default tag
    timm:NAME[.TAG]@PATH           local checkpoint (timm state_dict)
    timm:NAME[.TAG]@random[:SEED]  random weights
    openclip-classifier:ARCH[.TAG]@PATH
                                   an open_clip image tower with a linear classifier head (a
                                   fine-tuned CLIP), one file (``openclip_classifier_adapter``)

A weights source is always explicit: ``openclip:ViT-B-32`` alone is an error, never a random model.
Names and tags are checked against the installed open_clip / timm, and a misspelling is answered
with close matches. ``str(parse_model_id(text))`` is the canonical form (random seeds written out,
timm's default tag filled in, open_clip tags in open_clip's spelling); parsing it gives the same id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from embedstore.errors import ModelError
from embedstore.models import registry

HF_HUB_PREFIX = "hf-hub:"
RANDOM_SOURCE = "random"
_HF_REPO = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


@dataclass(frozen=True)
class ModelId:
    """A parsed model id.

    ``arch`` is the library's model name (``ViT-B-32``, ``resnet50``; for hf-hub ids open_clip's
    ``hf-hub:ORG/REPO``). Weights come from exactly one of: the hub tag ``tag`` alone, the file
    ``path``, the hub repo ``hf_hub``, or a random init with ``random_seed``. With ``path`` or
    ``random_seed`` a ``tag`` only selects the preprocessing and metadata of that release.
    """

    library: str
    arch: str
    tag: str | None = None
    path: str | None = None
    hf_hub: str | None = None
    random_seed: int | None = None

    def __post_init__(self) -> None:
        if self.library not in registry.LIBRARIES:
            raise ModelError(f"model library {self.library!r} is not one of {registry.LIBRARIES}")
        sources = [s for s in (self.path, self.hf_hub, self.random_seed) if s is not None]
        if len(sources) > 1:
            raise ModelError(f"model {self.arch!r}: give one weights source (path, hf_hub or random_seed), not several")
        if self.hf_hub is not None and (self.library != "openclip" or self.tag is not None
                                        or self.arch != HF_HUB_PREFIX + self.hf_hub):  # fmt: skip
            raise ModelError(f"hf-hub id {self.hf_hub!r}: only openclip:hf-hub:ORG/REPO is supported")
        if not sources and not self.tag:
            raise ModelError(
                f"model {self.library}:{self.arch} names no weights: add a pretrained tag, @PATH or @random"
            )
        if self.random_seed is not None and self.random_seed < 0:
            raise ModelError(f"random seed of {self.library}:{self.arch} must be >= 0, got {self.random_seed}")

    @property
    def is_random(self) -> bool:
        """True for random-init weights (``@random[:SEED]``)."""
        return self.random_seed is not None

    @property
    def name(self) -> str:
        """The library's name for the release: ``ARCH.TAG``, or ``ARCH`` without a tag."""
        return f"{self.arch}.{self.tag}" if self.tag else self.arch

    def __str__(self) -> str:
        text = f"{self.library}:{self.name}"
        if self.path is not None:
            text += f"@{self.path}"
        elif self.random_seed is not None:
            text += f"@{RANDOM_SOURCE}:{self.random_seed}"
        return text


def parse_model_id(text: str | ModelId) -> ModelId:
    """Parse a model id (see the module docstring); a ``ModelId`` is returned unchanged.

    Raises ``ModelError`` with one line naming the problem: unknown library, unknown architecture or
    tag (with close matches), missing weights source, bad seed, empty path.
    """
    if isinstance(text, ModelId):
        return text
    text = text.strip()
    library, sep, body = text.partition(":")
    if not sep or library not in _BODY_PARSERS:
        hint = registry.suggestion(library, list(registry.LIBRARIES))
        prefixes = " or ".join(f"'{name}:'" for name in registry.LIBRARIES)
        raise ModelError(f"model id {text!r} must start with {prefixes}{hint}")
    if not body:
        raise ModelError(f"model id {text!r} names no model after '{library}:'")
    return _BODY_PARSERS[library](text, body)


def _parse_source(text: str, source: str) -> tuple[str | None, int | None]:
    """``(path, random_seed)`` from what follows the ``@``."""
    if source == RANDOM_SOURCE:
        return None, 0
    if source.startswith(RANDOM_SOURCE + ":"):
        seed = source[len(RANDOM_SOURCE) + 1 :]
        if not seed.isdigit():
            raise ModelError(f"model id {text!r}: the random seed must be a non-negative integer, got {seed!r}")
        return None, int(seed)
    if not source:
        raise ModelError(
            f"model id {text!r}: nothing after '@' (expected a checkpoint path, 'random' or 'random:SEED')"
        )
    return source, None


def _parse_openclip(text: str, body: str) -> ModelId:
    if body.startswith(HF_HUB_PREFIX):
        repo = body[len(HF_HUB_PREFIX) :]
        if not _HF_REPO.fullmatch(repo):
            raise ModelError(f"model id {text!r}: expected openclip:hf-hub:ORG/REPO")
        return ModelId("openclip", HF_HUB_PREFIX + repo, hf_hub=repo)
    name, at, source = body.partition("@")
    path, seed = _parse_source(text, source) if at else (None, None)
    arch, tag = _split_openclip_name(text, name.replace("/", "-"))  # open_clip reads 'ViT-B/32' as 'ViT-B-32'
    if tag is not None:
        tag = _check_openclip_tag(text, arch, tag)
    if tag is None and path is None and seed is None:
        tags = registry.openclip_tags(arch)
        hint = (
            f"add a pretrained tag (e.g. {_example_tags(tags)}), @PATH or @random" if tags else "use @PATH or @random"
        )
        raise ModelError(f"model id {text!r} names no weights: {hint}")
    return ModelId("openclip", arch, tag=tag, path=path, random_seed=seed)


def _parse_openclip_classifier(text: str, body: str) -> ModelId:
    """``openclip-classifier:ARCH[.TAG]@PATH``: ARCH and TAG as for ``openclip:``; only a file can hold
    a trained head, so the weights source must be a path."""
    _, at, source = body.partition("@")
    if not at or _parse_source(text, source)[0] is None:
        raise ModelError(
            f"model id {text!r}: an openclip-classifier model needs @PATH (a file with its weights and head)"
        )
    return replace(_parse_openclip(text, body), library="openclip-classifier")


def _split_openclip_name(text: str, name: str) -> tuple[str, str | None]:
    """``ARCH[.TAG]`` -> (arch, tag) by matching the known architectures (the longest one that is
    followed by a dot wins), so an arch name containing a dot would still parse."""
    archs = registry.openclip_archs()
    if name in archs:
        return name, None
    prefixes = [a for a in archs if name.startswith(a + ".")]
    if prefixes:
        arch = max(prefixes, key=len)
        return arch, name[len(arch) + 1 :]
    guess = name.split(".", 1)[0]
    raise ModelError(f"model id {text!r}: unknown open_clip architecture {guess!r}{registry.suggestion(guess, archs)}")


def _check_openclip_tag(text: str, arch: str, tag: str) -> str:
    tags = registry.openclip_tags(arch)
    clean = registry.normalize_openclip_tag(tag)
    if clean in tags:
        return clean
    if not tags:
        raise ModelError(f"model id {text!r}: open_clip has no pretrained tags for {arch}; use @PATH or @random")
    raise ModelError(
        f"model id {text!r}: unknown pretrained tag {tag!r} for {arch}{registry.suggestion(tag, tags)} "
        f"(its tags: {_example_tags(tags, 12)})"
    )


def _parse_timm(text: str, body: str) -> ModelId:
    name, at, source = body.partition("@")
    if name.startswith(HF_HUB_PREFIX):
        raise ModelError(f"model id {text!r}: timm hf-hub ids are not supported; use timm:NAME.TAG or timm:NAME@PATH")
    path, seed = _parse_source(text, source) if at else (None, None)
    arch, _, tag = name.partition(".")  # timm's own rule (timm.models.split_model_name_tag)
    if arch not in registry.timm_archs():
        raise ModelError(
            f"model id {text!r}: unknown timm model {arch!r}{registry.suggestion(arch, registry.timm_archs())}"
        )
    with_weights = registry.timm_tags(arch)
    if tag:
        known = with_weights if path is None and seed is None else registry.timm_registered_tags(arch)
        if tag not in known:
            listed = f" (its tags: {_example_tags(with_weights, 12)})" if with_weights else ""
            raise ModelError(
                f"model id {text!r}: unknown timm tag {tag!r} for {arch}{registry.suggestion(tag, known)}{listed}"
            )
    elif path is None and seed is None:
        tag = registry.timm_default_tag(arch)
        if tag is None:
            raise ModelError(f"model id {text!r}: timm has no pretrained weights for {arch}; use @PATH or @random")
    return ModelId("timm", arch, tag=tag or None, path=path, random_seed=seed)


def _example_tags(tags: list[str], limit: int = 3) -> str:
    shown = ", ".join(f".{t}" for t in tags[:limit])
    return shown + (", ..." if len(tags) > limit else "")


_BODY_PARSERS = {"openclip": _parse_openclip, "timm": _parse_timm, "openclip-classifier": _parse_openclip_classifier}
