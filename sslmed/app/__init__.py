"""The orchestration on top: a recipe file -> validated recipe and data
(:mod:`~sslmed.app.prepare`) -> the multi-step run (:mod:`~sslmed.app.runner`) -> the
evaluated run and its results files (:mod:`~sslmed.app.results`), and the click group
(:mod:`~sslmed.app.cli`).

May import: every subpackage but ``sslmed.default_plugins`` (commands and components
reach the CLI through the hooks).
"""
