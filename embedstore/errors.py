"""The exceptions a user can cause. The CLI prints their message as one line and exits non-zero."""


class EmbedstoreError(Exception):
    """Base class of every error caused by user input or store state (never by a bug)."""


class StoreError(EmbedstoreError):
    """The store is missing, malformed, locked, or asked for something it does not hold."""


class FingerprintMismatch(StoreError):
    """An array is reopened for writing with a dataset, model or settings fingerprint that differs."""


class DatasetError(EmbedstoreError):
    """A dataset cannot be read or registered (missing file, bad label, escaping path, ...)."""


class ModelError(EmbedstoreError):
    """A model id cannot be parsed or its weights cannot be loaded."""


class AnalysisError(EmbedstoreError):
    """An analysis was given input it cannot evaluate (empty subset, NaN, too few models, ...)."""
