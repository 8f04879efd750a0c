"""peftrec: pretrained language models as recommenders, adapted with PEFT."""

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for static tools (type checkers, the API docs); imported lazily below
    from peftrec.app.recommender import Recommender

__version__ = "0.1.0"

# bitsandbytes (imported by PEFT) warns at import that its optional 4-bit CPU kernels from the
# Hub `kernels` package are missing; they are not needed and cannot be fetched offline.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str):
    if name == "Recommender":  # imported lazily: it pulls in torch, transformers and PEFT
        from peftrec.app.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'peftrec' has no attribute {name!r}")


__all__ = ["Recommender", "__version__"]
