"""Recommendation: a DLRM-style click-through model on simulated interactions with known
ground-truth preferences, served so one request scores a user against N candidates
(`docs/applications/recommendation.md`)."""
