"""Model builders Surge ships (trusted factories for the torch_factory engine)."""
