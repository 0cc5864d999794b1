"""What a run leaves on disk: the run folder and the name of every file in it
(:mod:`~sslmed.artifacts.rundir`), and the safetensors + JSON exports of backbones and
classifiers (:mod:`~sslmed.artifacts.exports`). Nothing here unpickles anything.

May import: ``sslmed.core``, ``sslmed.data``.
"""
