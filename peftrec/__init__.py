"""peftrec: pretrained language models as recommenders, adapted with PEFT."""
