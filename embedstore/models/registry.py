"""What the model libraries know: architecture names, pretrained tags, and close-match suggestions.

This module only asks open_clip and timm what exists; it builds nothing. Ids are written timm-style,
``arch.tag`` (timm's ``split_model_name_tag``): ``openclip:ViT-B-32.openai``,
``timm:vit_base_patch16_224.augreg_in21k_ft_in1k``.
"""

from __future__ import annotations

import difflib
import fnmatch
from functools import cache

import open_clip
import timm
from open_clip.pretrained import list_pretrained_tags_by_model

LIBRARIES = ("openclip", "timm", "openclip-classifier")


def openclip_archs() -> list[str]:
    """open_clip's model configs (built-in plus any added with ``open_clip.add_model_config``)."""
    return open_clip.list_models()


def openclip_tags(arch: str) -> list[str]:
    """Pretrained tags open_clip knows for ``arch`` (empty for an arch without released weights)."""
    return list_pretrained_tags_by_model(arch)


def normalize_openclip_tag(tag: str) -> str:
    """open_clip's own tag spelling rule: lower case, ``-`` read as ``_`` (``pretrained._clean_tag``)."""
    return tag.lower().replace("-", "_")


@cache
def timm_archs() -> frozenset[str]:
    """Every architecture timm can build, with or without pretrained weights."""
    return frozenset(timm.list_models())


def timm_registered_tags(arch: str) -> list[str]:
    """Every tag timm registers for ``arch`` (a tag names a preprocessing config and, usually, weights)."""
    return [name.split(".", 1)[1] for name in timm.models.get_arch_pretrained_cfgs(arch)]


def timm_tags(arch: str) -> list[str]:
    """timm's tags for ``arch`` that have released weights (a hub repo, a URL or a file), timm's order."""
    cfgs = timm.models.get_arch_pretrained_cfgs(arch)
    return [name.split(".", 1)[1] for name, cfg in cfgs.items() if cfg.hf_hub_id or cfg.url or cfg.file]


def timm_default_tag(arch: str) -> str | None:
    """The tag timm picks for ``create_model(arch, pretrained=True)``, or None when it has no weights."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return None
    return cfg.tag


def list_models(pattern: str = "*") -> list[str]:
    """Model ids with pretrained weights matching a shell wildcard, case-insensitively, sorted.

    The ids are ``openclip:ARCH.TAG`` for every pair of ``open_clip.list_pretrained()`` and
    ``timm:NAME.TAG`` for every entry of ``timm.list_pretrained()``; e.g. ``list_models("openclip:ViT-B-32.*")``
    or ``list_models("timm:resnet50.*")``. Local files, hf-hub repos and random weights are not listed.
    """
    ids = [f"openclip:{arch}.{tag}" for arch, tag in open_clip.list_pretrained()]
    ids += [f"timm:{name}" for name in timm.list_pretrained()]
    wanted = pattern.lower()
    return sorted(i for i in ids if fnmatch.fnmatchcase(i.lower(), wanted))


def close_matches(word: str, candidates: list[str] | frozenset[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (difflib ratio >= 0.6), best first; case is ignored."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[f] for f in found]


def suggestion(word: str, candidates: list[str] | frozenset[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for close matches of ``word``, or ``""`` when there are none."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return "; did you mean " + ", ".join(repr(m) for m in matches) + "?"
