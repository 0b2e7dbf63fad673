"""An extraction plan: which models on which datasets, and how.

A plan comes from the command line (``--model ID ... --dataset NAME=KIND:PATH ...``) or from a TOML file:

.. code-block:: toml

    [settings]                      # all optional; these are the defaults
    dtype = "float16"               # image_emb / text_emb / caption_emb dtype ("float16" | "float32")
    batch_size = 256
    device = "auto"                 # "auto" (cuda when present, saying so) | "cpu" | "cuda" | "cuda:1"
    precision = "auto"              # "auto" (bf16 on GPU, fp32 on CPU) | "fp32" | "fp16" | "bf16"
    decode = "auto"                 # "auto" (gpu when the device is a GPU) | "cpu" | "gpu"
    workers = "auto"                # reader/decoder processes (0: in the main process); auto: Settings.resolved_workers
    cpu_decode_share = 0.0          # gpu decode: this share of the rows is PIL-decoded by the workers
    chunk_rows = 4096               # rows per chunk: the unit of writing and of resume
    pixel_limit = 89478485          # bigger images are recorded as bad samples
    compression = "none"            # "none" | "blosc-lz4" | "zstd"

    [[models]]
    id = "openclip:ViT-B-32.laion2b_s34b_b79k"
    [models.metadata]               # overrides of the model's metadata (group, train_data, ...)
    group = "zero-shot CLIP"

    [[datasets]]
    name = "imagenet-val"
    source = "imagefolder:/data/imagenet/val"
    [datasets.options]              # reader options, as in the spec's ?key=value
    classes = "/data/imagenet/wnids.txt"
    [datasets.prompt_sets]          # extra named prompt sets (templates with {c})
    openai7 = ["itap of a {c}.", "a bad photo of the {c}."]
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embedstore.errors import EmbedstoreError
from embedstore.extract.decode import DEFAULT_PIXEL_LIMIT


class PlanError(EmbedstoreError):
    """A plan file or plan argument is malformed."""


DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DECODES = ("auto", "cpu", "gpu")
COMPRESSIONS = ("none", "blosc-lz4", "zstd")


@dataclass(frozen=True)
class Settings:
    dtype: str = "float16"
    batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    decode: str = "auto"
    workers: int | str = "auto"
    chunk_rows: int = 4096
    pixel_limit: int = DEFAULT_PIXEL_LIMIT
    compression: str = "none"
    cpu_decode_share: float = 0.0

    def __post_init__(self) -> None:
        checks = [("dtype", self.dtype, DTYPES), ("precision", self.precision, PRECISIONS),
                  ("decode", self.decode, DECODES), ("compression", self.compression, COMPRESSIONS)]  # fmt: skip
        for name, value, allowed in checks:
            if value not in allowed:
                raise PlanError(f"settings.{name} = {value!r}: use one of {', '.join(allowed)} ({_flag(name)})")
        for name in ("batch_size", "chunk_rows", "pixel_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlanError(f"settings.{name} must be a positive integer, got {value!r} ({_flag(name)})")
        if self.workers != "auto" and (not isinstance(self.workers, int) or isinstance(self.workers, bool)
                                       or self.workers < 0):  # fmt: skip
            raise PlanError(f'settings.workers must be "auto" or 0 or more, got {self.workers!r} (--workers)')
        share = self.cpu_decode_share
        if (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1
                or abs(share * 1000 - round(share * 1000)) > 1e-9):  # fmt: skip
            raise PlanError(f"settings.cpu_decode_share must be a number from 0 to 1 in steps of 0.001, got {share!r} "
                            "(--cpu-decode-share)")  # fmt: skip
        # one spelling per share (1, 1.0 and 0.1 + 0.2 vs 0.3 pick the same rows): fingerprints compare it
        object.__setattr__(self, "cpu_decode_share", round(share * 1000) / 1000)
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise PlanError(f"settings.device = {self.device!r}: use auto, cpu, cuda or cuda:N (--device)")

    def resolved_workers(self, decode: str, cores: int | None) -> int:
        """``workers``, with ``"auto"`` resolved for the decode path (``"cpu"`` or ``"gpu"``) and the
        cores this process has: 4 on the CPU path; on the GPU path half the cores, from 2 to 8 (there the
        workers read the files and parse the JPEG headers for the GPU decoder). On a 16-core H200 box 8
        workers gave ViT-B-32 10,331 img/s end to end against 9,291 with 4, both warm passes in one process
        (benchmarks/results/decode_share_nvidia-h200_run3.json)."""
        if self.workers != "auto":
            return int(self.workers)
        return 4 if decode == "cpu" else min(8, max(2, (cores or 4) // 2))

    @property
    def cpu_decode_permille(self) -> int:
        """``cpu_decode_share`` in rows per 1000 (``reader.cpu_decoded``)."""
        return round(self.cpu_decode_share * 1000)


def _flag(setting: str) -> str:
    """The extract option that sets ``setting`` on the command line."""
    return "--" + setting.replace("_", "-")


@dataclass(frozen=True)
class ModelPlan:
    id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    source: str  # "KIND:PATH"
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt_sets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: Where a plan file declared it (``plan.toml: datasets[2]``), for errors found when it opens.
    origin: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Plan:
    models: tuple[ModelPlan, ...]
    datasets: tuple[DatasetPlan, ...]
    settings: Settings = Settings()

    def __post_init__(self) -> None:
        if not self.models:
            raise PlanError("the plan names no model: add --model ID (or [[models]] in the plan file)")
        if not self.datasets:
            raise PlanError("the plan names no dataset: add --dataset NAME=KIND:PATH (or [[datasets]])")
        from embedstore.store import stored_model_id  # X@random and X@random:0 are one model

        model_ids = [stored_model_id(m.id) for m in self.models]
        for kind, names in (("model", model_ids), ("dataset", [d.name for d in self.datasets])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise PlanError(f"{kind} {dupes[0]!r} appears twice in the plan")

    def with_settings(self, **overrides: Any) -> Plan:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, settings=replace(self.settings, **given)) if given else self


_SETTINGS_KEYS = set(Settings.__dataclass_fields__)


def load_plan(path: str | Path, models: Sequence[str] = (), datasets: Sequence[str] = ()) -> Plan:
    """Read a TOML plan file; every mistake is one line naming the file and the key. ``models`` (ids)
    and ``datasets`` (``NAME=KIND:PATH``), given on the command line, are added to the plan's."""
    from embedstore.analysis.prompts import validate_templates
    from embedstore.sources.spec import DATASET_NAME

    path, models_given, datasets_given = Path(path), models, datasets
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"plan file {path} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"settings", "models", "datasets"}
    if unknown:
        raise PlanError(f"{path}: unknown section {sorted(unknown)[0]!r} (use settings, models, datasets)")
    settings_raw = raw.get("settings", {})
    _require(isinstance(settings_raw, dict), f"{path}: [settings] must be a table of key = value lines")
    for section in ("models", "datasets"):
        _require(isinstance(raw.get(section, []), list), f"{path}: {section} must be [[{section}]] entries")
    unknown = set(settings_raw) - _SETTINGS_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown setting {sorted(unknown)[0]!r}; known: {', '.join(sorted(_SETTINGS_KEYS))}")
    models = []
    for i, entry in enumerate(raw.get("models", [])):
        if not isinstance(entry, dict) or "id" not in entry:
            raise PlanError(f"{path}: models[{i}] needs an id")
        extra = set(entry) - {"id", "metadata"}
        if extra:
            raise PlanError(f"{path}: models[{i}] has unknown key {sorted(extra)[0]!r}")
        _require(isinstance(entry.get("metadata", {}), dict), f"{path}: models[{i}].metadata must be a table")
        models.append(ModelPlan(str(entry["id"]), dict(entry.get("metadata", {}))))
    datasets = []
    for i, entry in enumerate(raw.get("datasets", [])):
        if not isinstance(entry, dict) or "name" not in entry or "source" not in entry:
            raise PlanError(f"{path}: datasets[{i}] needs a name and a source (KIND:PATH)")
        extra = set(entry) - {"name", "source", "options", "prompt_sets"}
        if extra:
            raise PlanError(f"{path}: datasets[{i}] has unknown key {sorted(extra)[0]!r}")
        where = f"{path}: datasets[{i}]"
        _require(isinstance(entry["name"], str) and DATASET_NAME.fullmatch(entry["name"]) is not None,
                 f"{where}: name {entry['name']!r} must be letters, digits, '_', '.', '-' (starting with a letter or digit)")  # fmt: skip
        _require(isinstance(entry.get("options", {}), dict), f"{where}.options must be a table")
        _require(isinstance(entry.get("prompt_sets", {}), dict), f"{where}.prompt_sets must be a table of lists")
        for set_name, set_templates in dict(entry.get("prompt_sets", {})).items():
            try:
                validate_templates(set_templates)
            except EmbedstoreError as exc:
                raise PlanError(f"{where}.prompt_sets.{set_name}: {exc}") from None
        source = str(entry["source"])
        if ":" in source and not Path(source.split(":", 1)[1].split("?", 1)[0].split("#", 1)[0]).is_absolute():
            kind, rest = source.split(":", 1)
            if kind != "synthetic":
                source = f"{kind}:{(path.parent / rest).as_posix()}"  # relative to the plan file
        prompt_sets = {str(k): [str(t) for t in v] for k, v in dict(entry.get("prompt_sets", {})).items()}
        options = dict(entry.get("options", {}))
        datasets.append(DatasetPlan(str(entry["name"]), source, options, prompt_sets, origin=where))
    try:
        settings = Settings(**settings_raw)
    except (TypeError, PlanError) as exc:
        raise PlanError(f"{path}: {exc}") from None
    extra = _from_args(models_given, datasets_given)
    return Plan(tuple(models) + extra.models, tuple(datasets) + extra.datasets, settings)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise PlanError(message)


def plan_from_args(models: Sequence[str], datasets: Sequence[str], **settings: Any) -> Plan:
    """A plan from ``--model`` ids and ``--dataset NAME=KIND:PATH`` specs."""
    parts = _from_args(models, datasets)
    return Plan(parts.models, parts.datasets).with_settings(**settings)


@dataclass(frozen=True)
class _PlanParts:
    models: tuple[ModelPlan, ...]
    datasets: tuple[DatasetPlan, ...]


def _from_args(models: Sequence[str], datasets: Sequence[str]) -> _PlanParts:
    from embedstore.sources import parse_dataset_spec

    parsed = [parse_dataset_spec(text) for text in datasets]
    return _PlanParts(tuple(ModelPlan(m) for m in models), tuple(DatasetPlan(n, s) for n, s in parsed))
