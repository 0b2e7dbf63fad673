"""Where weights come from: the Hugging Face cache, a local file, or a seeded random init.

Nothing here contacts a hub. ``cached_hub_file`` only looks in the local cache, so an offline run
(``HF_HUB_OFFLINE=1``) fails fast with a message that says which file to provide.

Checkpoints that are pickles are opened with ``torch.load(..., weights_only=True)`` before a library
sees them, so a file holding arbitrary Python objects is refused, never executed. The libraries load
with ``weights_only=True`` too (open_clip 3.3 ``factory.load_state_dict``, timm ``_torch_load``), but
open_clip retries with a plain ``torch.load`` when ``torch.load`` raises ``TypeError``; this check
runs first, so that retry never sees a file that is not plain tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub import constants as hf_constants

from embedstore.errors import ModelError
from embedstore.models.failures import one_line

#: Checkpoint formats that contain no pickle (safetensors; NumPy archives load with allow_pickle=False).
_PICKLE_FREE_SUFFIXES = (".safetensors", ".npz", ".npy")
_TRUE = ("1", "true", "yes", "on")
#: Classes a checkpoint may hold besides tensors and containers: timm's training script saves its
#: ``argparse.Namespace`` under ``args`` and timm allows it (``timm.models._helpers._torch_load``).
SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace,)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``, read now or at import)."""
    return bool(hf_constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder that ``cached_hub_file`` searches."""
    return str(hf_constants.HF_HUB_CACHE)


def cached_hub_file(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` of hub repo ``repo_id`` present in the local cache (at ``revision``,
    default ``main``), or None. Never contacts the hub."""
    for filename in filenames:
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def snapshot_revision(cached_file: Path) -> str | None:
    """The commit hash of a file in the hub cache (``.../snapshots/<commit>/<file>``), else None."""
    parts = cached_file.parts
    if len(parts) >= 3 and parts[-3] == "snapshots":
        return parts[-2]
    return None


def check_checkpoint_file(path: Path) -> None:
    """Refuse a checkpoint that is missing, unreadable, or a pickle holding anything but tensors.

    Pickle files are opened with ``torch.load(path, weights_only=True)`` (memory-mapped when the file
    is in the zip format, so this costs little), the same restricted unpickler open_clip 3.x and timm
    use, with timm's one addition (``SAFE_CHECKPOINT_GLOBALS``). Raises ``ModelError`` naming the
    file and the reason.
    """
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} does not exist")
    if path.suffix in _PICKLE_FREE_SUFFIXES:
        return
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise ModelError(
                f"checkpoint {path} holds objects other than tensors ({', '.join(unsafe)}) and was refused by "
                f"torch.load(weights_only=True); save only the state_dict (or .safetensors)"
            ) from e
        raise ModelError(
            f"checkpoint {path} was refused by torch.load(weights_only=True) ({_unpickler_reason(e)}); "
            f"it is not a plain tensor checkpoint: save only the state_dict (or .safetensors)"
        ) from e
    except Exception as e:  # corrupt or foreign file: torch raises many types here
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive, or a pickle (legacy)
            raise ModelError(f"checkpoint {path} is not a file torch.save wrote (it begins {head!r})") from e
        raise ModelError(
            f"checkpoint {path} cannot be read as a torch checkpoint ({type(e).__name__}: {one_line(e)})"
        ) from e


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The specific part of torch's weights-only refusal (after "WeightsUnpickler error:")."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return found.group(1).strip() if found else one_line(error)


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects a zip-format torch checkpoint would need beyond tensors (empty if unknown)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy format or unreadable: the caller falls back to torch's message
        return []


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_text(text: str) -> str:
    """sha256 hex digest of a UTF-8 string."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_state_dict(module: torch.nn.Module, salt: str) -> str:
    """sha256 hex digest of ``salt`` followed by every state_dict entry (name, dtype, shape, raw bytes)
    in name order. Equal weights give equal digests on every machine of the same byte order."""
    digest = hashlib.sha256(salt.encode())
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # a view, no copy
    return digest.hexdigest()


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run a model constructor under ``torch.manual_seed(seed)`` without disturbing the caller's CPU
    random state. Models are always built on the CPU, so the weights do not depend on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def missing_weights_error(model_id: str, repo_id: str, filename: str) -> ModelError:
    """The one-line error for pretrained weights that are not on disk while the hub is offline."""
    return ModelError(
        f"weights of {model_id} are not on disk: {repo_id}/{filename} is not in the Hugging Face cache "
        f"({hub_cache_dir()}) and HF_HUB_OFFLINE is set; on a connected machine run "
        f"`hf download {repo_id} {filename}` and copy the cache here, "
        f"or copy the file and load it as {model_id}@PATH"
    )
