"""Datasets Surge ships loaders for."""

from surge.data.fashion_mnist import FASHION_CLASSES, load_fashion_mnist

__all__ = ["FASHION_CLASSES", "load_fashion_mnist"]
