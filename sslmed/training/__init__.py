"""Pre-training: view pipelines, the :class:`SSLMethod` base of every objective, one
step on Lightning (loader, trainer, checkpoints, resume, backbone export) and
``init_from`` another run's export.

May import: ``sslmed.core``, ``sslmed.data``, ``sslmed.artifacts``.
"""
