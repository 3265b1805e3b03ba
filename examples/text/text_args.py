"""Checks of the text examples' command-line texts (beside them: each example imports it)."""

from __future__ import annotations

import argparse


def check_texts(parser: argparse.ArgumentParser, texts: list[str]) -> None:
    """Exit 2 naming a text argument that is not UTF-8 (a non-UTF-8 command-line byte arrives
    as a lone surrogate, which `str.encode` refuses with a traceback)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            parser.error(f"text {text!r} is not valid UTF-8")
