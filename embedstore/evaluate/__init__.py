"""Analysis runners: read cached arrays from a store, call ``embedstore.analysis``, write ``results``.

One module per analysis; ``common`` holds model/dataset selection and the shared readers.
"""
