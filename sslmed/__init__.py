"""sslmed: plugin-based self-supervised learning for medical image classification."""

__version__ = "0.1.0"
