"""What a backbone is worth: frozen features, linear and kNN probes, the supervised
reference, fine-tuning, calibration, the out-of-distribution score and paired
comparisons. Returns rows and fitted objects; writes nothing.

May import: ``sslmed.core``, ``sslmed.data``, ``sslmed.artifacts``, ``sslmed.training``.
"""
