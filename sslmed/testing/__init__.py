"""Helpers shipped with the package for its tests and benchmarks (as Lightning ships
``lightning.pytorch.demos``): DICOM files built from real pixels (:mod:`.dicom`), a
loopback HTTP server with archives in the shapes public datasets come in
(:mod:`.loopback`), and small model exports on real data (:mod:`.models`).

Nothing in the library imports this subpackage; it may import any other.
"""
