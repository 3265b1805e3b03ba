"""CLI commands grouped by area; each module registers on surge.cli.app."""
