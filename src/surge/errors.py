"""Errors Surge raises on purpose: each carries a one-line message naming the bad value."""


class SurgeError(Exception):
    """Base class: a user-facing error whose message is safe to print as one line."""


class ModelLoadError(SurgeError):
    """A model file or config could not be loaded; the message names the file and the problem."""


class ConfigError(SurgeError):
    """A configuration value is invalid; the message names the key and the value."""


class InvalidNameError(SurgeError):
    """A model, version or variant name is not allowed (for example it would leave the repository)."""


class InputError(SurgeError):
    """A request's tensors do not match the model's signature."""


class NotFoundError(SurgeError):
    """A model, version or variant does not exist."""
