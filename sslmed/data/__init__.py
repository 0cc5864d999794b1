"""Images and labels: records and sources, readers, splits, data roots, verification,
the dataset-adapter toolkit, the one image loader, the decode-once cache, inspection,
the dataset catalogue and ``sslmed data fetch``.

May import: ``sslmed.core``.
"""
