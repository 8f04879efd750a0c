"""Library messages a user cannot act on, silenced for the command line and the recipes."""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISY_LIBRARIES = ("httpx", "datasets", "peft", "transformers", "accelerate", "bitsandbytes")


def quiet_libraries() -> None:
    """Silence library messages a user cannot act on (progress of hub lookups, deprecations
    raised inside PEFT and transformers' own code); warnings and errors stay visible."""
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # bitsandbytes on CPU: its optional 4-bit kernels come from the Hub's `kernels` package
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning
    )
    if "transformers" in sys.modules or "datasets" in sys.modules:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
        datasets.disable_progress_bars()  # "Generating train split" bars when reading data
    else:  # not imported yet (serving needs neither): they read these when they are
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
