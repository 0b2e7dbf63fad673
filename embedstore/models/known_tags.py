"""What a pretrained tag says about training: data, its size, fine-tuning and objective.

Two maintained tables, one per library:

- open_clip tags name a training set and schedule (``laion2b_s34b_b79k`` = LAION-2B, 34B samples
  seen, batch 79k). ``OPENCLIP_TAG_PREFIXES`` maps the tag's leading words to the data set.
- timm tags are underscore-separated recipe words around data-set words, ``_ft_`` starting the
  fine-tuning stages (``augreg_in21k_ft_in1k``, ``laion2b_ft_in12k_in1k``, ``fcmae_ft_in22k_in1k_384``).
  ``TIMM_DATA_WORDS`` and ``TIMM_METHOD_LOSSES`` read them.

A tag the tables do not know gives ``None`` fields, never a guess; users override metadata fields.
``DATASET_SIZES`` are approximate sample counts as the data sets' publications state them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Objectives, as stored in the ``loss`` metadata field.
SOFTMAX_CONTRASTIVE = "softmax-contrastive"  # CLIP's InfoNCE (Radford et al. 2021)
SIGMOID = "sigmoid"  # SigLIP's pairwise sigmoid loss (Zhai et al. 2023)
CROSS_ENTROPY = "cross-entropy"  # supervised classification
CONTRASTIVE_CAPTIONING = "softmax-contrastive+captioning"  # CoCa (Yu et al. 2022)
CONTRASTIVE_DISTILLATION = "softmax-contrastive+distillation"  # MobileCLIP's reinforced training
MASKED_IMAGE_MODELING = "masked-image-modeling"  # MAE, BEiT/EVA MIM, ConvNeXt-V2 FCMAE
SELF_DISTILLATION = "self-distillation"  # DINO, DINOv2/v3
SELF_SUPERVISED = "self-supervised"  # other self-supervised objectives (SEER's SwAV, I-JEPA)

CLIP_LOSSES = (SOFTMAX_CONTRASTIVE, SIGMOID, CONTRASTIVE_CAPTIONING, CONTRASTIVE_DISTILLATION)

#: Approximate published sample counts (images or image-text pairs).
DATASET_SIZES: dict[str, int] = {
    "WIT": 400_000_000,  # OpenAI CLIP (Radford et al. 2021)
    "LAION-400M": 400_000_000,
    "LAION-2B": 2_320_000_000,  # LAION-5B's English subset
    "LAION-5B": 5_850_000_000,
    "LAION-Aesthetics": 900_000_000,  # open_clip's "LAION-A" subset of LAION-2B
    "DataComp-1B": 1_400_000_000,  # DataComp xlarge, best filter (Gadre et al. 2023)
    "DataComp-L": 140_000_000,
    "DataComp-M": 14_000_000,
    "DataComp-S": 1_400_000,
    "CommonPool-XL": 12_800_000_000,  # unfiltered pools; filtered subsets have no size here
    "CommonPool-L": 1_280_000_000,
    "CommonPool-M": 128_000_000,
    "CommonPool-S": 12_800_000,
    "DFN-2B": 2_000_000_000,  # Fang et al. 2023
    "DFN-5B": 5_000_000_000,
    "MetaCLIP-400M": 400_000_000,  # Xu et al. 2023
    "MetaCLIP-2.5B": 2_500_000_000,
    "Merged-2B": 2_000_000_000,  # EVA-CLIP: LAION-2B + COYO-700M subset
    "WebLI": 10_000_000_000,  # SigLIP (Zhai et al. 2023)
    "YFCC-15M": 15_000_000,
    "CC12M": 12_000_000,
    "ImageNet-1k": 1_281_167,
    "ImageNet-21k": 14_197_122,
    "IG-1B": 1_000_000_000,
    "YFCC-100M": 100_000_000,
    "JFT-300M": 300_000_000,
    "LVD-142M": 142_000_000,  # DINOv2
    "LVD-1689M": 1_689_000_000,  # DINOv3
    "Merged-38M": 38_000_000,  # EVA's MIM pretraining set
}


@dataclass(frozen=True)
class TagInfo:
    """Training facts read from a tag. ``loss`` None means: derive it from the architecture."""

    train_data: str | None = None
    fine_tuned: str | None = None
    fine_tune_method: str | None = None
    loss: str | None = None

    @property
    def train_size(self) -> int | None:
        """Approximate size of ``train_data`` (``DATASET_SIZES``), None when unknown."""
        return DATASET_SIZES.get(self.train_data) if self.train_data else None


# -- open_clip ---------------------------------------------------------------------------------------

#: open_clip tag prefix -> what it was trained on. The longest matching prefix wins.
OPENCLIP_TAG_PREFIXES: dict[str, TagInfo] = {
    "openai": TagInfo("WIT"),
    "laion400m": TagInfo("LAION-400M"),
    "laion2b": TagInfo("LAION-2B"),
    "laion5b": TagInfo("LAION-5B"),
    "frozen_laion5b": TagInfo("LAION-5B"),
    "laion_aesthetic": TagInfo("LAION-Aesthetics"),
    "mscoco_finetuned_laion2b": TagInfo("LAION-2B", fine_tuned="MSCOCO", fine_tune_method="end-to-end"),
    "datacomp_xl": TagInfo("DataComp-1B"),
    "datacomp_s34b": TagInfo("DataComp-1B"),
    "datacomp1b": TagInfo("DataComp-1B"),
    "datacomp_l": TagInfo("DataComp-L"),
    "datacomp_m": TagInfo("DataComp-M"),
    "datacomp_s_": TagInfo("DataComp-S"),
    "datacompdr": TagInfo("DataCompDR-1B", loss=CONTRASTIVE_DISTILLATION),
    "dfn2b": TagInfo("DFN-2B"),
    "dfn5b": TagInfo("DFN-5B"),
    "dfndr2b": TagInfo("DFNDR-2B", loss=CONTRASTIVE_DISTILLATION),
    "metaclip_400m": TagInfo("MetaCLIP-400M"),
    "metaclip_fullcc": TagInfo("MetaCLIP-2.5B"),
    "metaclip2_worldwide": TagInfo("MetaCLIP-2-worldwide"),
    "merged2b": TagInfo("Merged-2B"),
    "webli": TagInfo("WebLI"),
    "yfcc15m": TagInfo("YFCC-15M"),
    "cc12m": TagInfo("CC12M"),
}

_COMMONPOOL = re.compile(r"commonpool_(s|m|l|xl)_(?:(basic|clip|image|laion|text)_)?s\w+")


def openclip_tag_info(tag: str) -> TagInfo:
    """Training facts of an open_clip pretrained tag (unknown tags: all fields None)."""
    pool = _COMMONPOOL.fullmatch(tag)
    if pool:
        scale, data_filter = pool.groups()
        name = f"CommonPool-{scale.upper()}"
        return TagInfo(name if data_filter is None else f"{name} ({data_filter} filter)")
    matches = [p for p in OPENCLIP_TAG_PREFIXES if tag.startswith(p)]
    if not matches:
        return TagInfo()
    return OPENCLIP_TAG_PREFIXES[max(matches, key=len)]


# -- timm --------------------------------------------------------------------------------------------

#: timm tag word -> data set. ImageNet-22k (fb_in22k) and ImageNet-21k (goog_in21k) are the same
#: full ImageNet release, named as the study names it.
TIMM_DATA_WORDS: dict[str, str] = {
    "in1k": "ImageNet-1k",
    "in12k": "ImageNet-12k",  # timm's 11,821-class subset of ImageNet-22k
    "in21k": "ImageNet-21k",
    "in22k": "ImageNet-21k",
    "inw21k": "ImageNet-21k",
    "ig1b": "IG-1B",
    "yfcc100m": "YFCC-100M",
    "jft": "JFT-300M",
    "lvd142m": "LVD-142M",
    "lvd1689m": "LVD-1689M",
    "laion2b": "LAION-2B",
    "laion400m": "LAION-400M",
    "laiona": "LAION-Aesthetics",
    "openai": "WIT",
    "dfn2b": "DFN-2B",
    "dfn5b": "DFN-5B",
    "dfndr2b": "DFNDR-2B",
    "datacompxl": "DataComp-1B",
    "datacomp1b": "DataComp-1B",
    "webli": "WebLI",
    "merged2b": "Merged-2B",
    "m38m": "Merged-38M",
    "cc12m": "CC12M",
    "yfcc15m": "YFCC-15M",
    "metaclip_2pt5b": "MetaCLIP-2.5B",
    "metaclip_400m": "MetaCLIP-400M",
}

#: timm tag word naming a pretraining method -> its objective.
TIMM_METHOD_LOSSES: dict[str, str] = {
    "mae": MASKED_IMAGE_MODELING,
    "mim": MASKED_IMAGE_MODELING,
    "fcmae": MASKED_IMAGE_MODELING,
    "dino": SELF_DISTILLATION,
    "dinov3": SELF_DISTILLATION,
    "seer": SELF_SUPERVISED,
    "ijepa": SELF_SUPERVISED,
    "clip": SOFTMAX_CONTRASTIVE,
}

#: Image-text data sets trained with CLIP's softmax contrastive loss.
CLIP_DATASETS = (
    "WIT", "LAION-2B", "LAION-400M", "LAION-Aesthetics", "DFN-2B", "DFN-5B", "DataComp-1B", "Merged-2B",
    "CC12M", "YFCC-15M", "MetaCLIP-2.5B", "MetaCLIP-400M",
)  # fmt: skip

#: Objective implied by a pretraining data set when the tag names no method.
_DATA_LOSSES: dict[str, str] = {
    **dict.fromkeys(CLIP_DATASETS, SOFTMAX_CONTRASTIVE),
    "DFNDR-2B": CONTRASTIVE_DISTILLATION,
    "WebLI": SIGMOID,
    "LVD-142M": SELF_DISTILLATION,
    "LVD-1689M": SELF_DISTILLATION,
    "Merged-38M": MASKED_IMAGE_MODELING,
    "ImageNet-1k": CROSS_ENTROPY,
    "ImageNet-12k": CROSS_ENTROPY,
    "ImageNet-21k": CROSS_ENTROPY,
    "IG-1B": CROSS_ENTROPY,  # (semi-)weakly supervised hashtag / pseudo-label classification
    "YFCC-100M": CROSS_ENTROPY,
    "JFT-300M": CROSS_ENTROPY,
}


def _timm_data_words(words: list[str]) -> list[tuple[int, str]]:
    """(position, data set) of every data-set word, joining two-word names such as metaclip_2pt5b."""
    found = []
    i = 0
    while i < len(words):
        pair = "_".join(words[i : i + 2])
        if pair in TIMM_DATA_WORDS:
            found.append((i, TIMM_DATA_WORDS[pair]))
            i += 2
            continue
        if words[i] in TIMM_DATA_WORDS:
            found.append((i, TIMM_DATA_WORDS[words[i]]))
        i += 1
    return found


def timm_tag_info(tag: str) -> TagInfo:
    """Training facts of a timm pretrained tag.

    The data sets before ``ft`` are pretraining (the first is ``train_data``), those after it are
    fine-tuning stages (the last is ``fine_tuned``; earlier ones are named in ``fine_tune_method``).
    Without ``ft``, data sets after the first are fine-tuning stages. ``loss`` is the pretraining
    objective: a method word (``mae``, ``dino``, ``clip``...) or else the pretraining data's usual one.
    """
    words = tag.lower().split("_")
    found = _timm_data_words(words)
    ft_at = words.index("ft") if "ft" in words else None
    if ft_at is None:
        pre, post = [d for _, d in found[:1]], [d for _, d in found[1:]]
    else:
        pre = [d for i, d in found if i < ft_at]
        post = [d for i, d in found if i > ft_at]
    train_data = pre[0] if pre else None
    pretraining_words = words[:ft_at] if ft_at is not None else words
    methods = [TIMM_METHOD_LOSSES[w] for w in pretraining_words if w in TIMM_METHOD_LOSSES]
    loss = methods[0] if methods else _DATA_LOSSES.get(train_data) if train_data else None
    fine_tuned = post[-1] if post else None
    method = None
    if post:
        method = "end-to-end" + (f" via {', '.join(post[:-1])}" if len(post) > 1 else "")
    return TagInfo(train_data, fine_tuned=fine_tuned, fine_tune_method=method, loss=loss)
