"""Tuning reports rendered as PNG plots and an HTML page."""

from surge.report.render import load_report, pareto_front, render_report

__all__ = ["load_report", "pareto_front", "render_report"]
