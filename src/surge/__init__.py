"""Surge: serve, optimize, evaluate and train deep-learning models under high concurrency."""

from surge.errors import SurgeError

__all__ = ["SurgeError", "__version__"]
__version__ = "0.1.0"
