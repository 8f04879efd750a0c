"""Argument types the ``peftrec`` commands share: a value checked as it is parsed, so that a
mistake is reported by the argument parser before anything is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def model_folder(text: str) -> Path:
    folder = Path(text)
    if not (folder / "peftrec.json").is_file():
        raise argparse.ArgumentTypeError(f"{folder}: not a saved peftrec model (no peftrec.json)")
    return folder
