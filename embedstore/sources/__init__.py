"""Dataset readers: every dataset the extractor reads, as ordered samples plus their encoded bytes.

``open_dataset(name, "KIND:PATH?options")`` validates a dataset completely and returns a `Dataset`;
``dataset.iter_encoded(start, stop)`` streams the (never decoded) image bytes of a row range.
Kinds: ``imagefolder``, ``manifest`` (CSV/Parquet/JSONL), ``wds`` (CLIP_benchmark's WebDataset
layout), ``captions`` (retrieval caption sets) and ``synthetic`` (the seeded shapes world).
`write_dataset` writes any dataset back out in any of those layouts.
"""

from embedstore.sources.base import Dataset, EncodedSample, Sample
from embedstore.sources.registry import open_dataset
from embedstore.sources.spec import parse_dataset_spec
from embedstore.sources.writers import write_dataset

__all__ = ["Dataset", "EncodedSample", "Sample", "open_dataset", "parse_dataset_spec", "write_dataset"]
