"""Using a trained model: the classifier export, predict, Grad-CAM, and the web page
with its HTTP API (:mod:`sslmed.serving.web`). Reads exports; never imports the
trainer (``sslmed.training.engine``).

May import: ``sslmed.core``, ``sslmed.data``, ``sslmed.artifacts``, ``sslmed.evaluation``,
``sslmed.training.transforms``.
"""
