"""The contracts a plugin author imports, and nothing else of sslmed's.

Holds the hook specifications, the plugin manager, the component registry, the user
errors, the recipe (schema, YAML loader, validation), the :class:`Backbone` contract,
classification tasks and metrics, and atomic file writes.

May import: only the standard library, third-party packages and ``sslmed.core``
itself. Every other subpackage builds on this one.
"""
