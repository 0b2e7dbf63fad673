"""Model adapters: every encoder the extractor runs, named by one id syntax::

    from embedstore.models import load_model
    model = load_model("openclip:embedstore-tiny@random")  # tiny offline CLIP, seed 0
    features = model.encode_image(images)                  # [B, 32], as the encoder returns it

Ids (see ``embedstore.models.ids``): ``openclip:ARCH.TAG``, ``openclip:ARCH[.TAG]@PATH``,
``openclip:hf-hub:ORG/REPO``, ``timm:NAME[.TAG]``, ``timm:NAME[.TAG]@PATH``, and ``@random[:SEED]``.

Importing this package adds the bundled open_clip model configs (``configs/*.json``, e.g.
``embedstore-tiny``) to open_clip's registry, so those names work wherever open_clip is asked.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent / "configs"


def register_bundled_configs() -> None:
    """Add ``CONFIG_DIR`` to open_clip's model configs once (open_clip rescans on each add)."""
    bundled = {p.stem for p in CONFIG_DIR.glob("*.json")}
    if not bundled <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


register_bundled_configs()

from embedstore.models.adapter import ModelAdapter  # noqa: E402
from embedstore.models.ids import ModelId, parse_model_id  # noqa: E402
from embedstore.models.loading import load_model  # noqa: E402
from embedstore.models.metadata import METADATA_FIELDS, apply_overrides  # noqa: E402
from embedstore.models.preprocess import PreprocessConfig  # noqa: E402
from embedstore.models.registry import list_models  # noqa: E402

__all__ = [
    "CONFIG_DIR",
    "METADATA_FIELDS",
    "ModelAdapter",
    "ModelId",
    "PreprocessConfig",
    "apply_overrides",
    "list_models",
    "load_model",
    "parse_model_id",
    "register_bundled_configs",
]
