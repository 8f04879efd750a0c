"""The training recipes (``train_<task>.py``) and their configs (``configs/*.yaml``).

Installed as ``peftrec_recipes``; run one by name with ``peftrec train <task> --config <name>``
or launch its file (``accelerate launch recipes/train_<task>.py``).
"""
