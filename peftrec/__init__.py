"""peftrec: pretrained language models as recommenders, adapted with PEFT."""

__version__ = "0.1.0"
