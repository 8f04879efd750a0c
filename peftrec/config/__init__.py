"""Config schemas: the sections every recipe shares, and strict loading.

A task's own sections and its recipe's root config live with the task
(``peftrec.tasks.<task>.config``).
"""

from peftrec.config.sections import *  # noqa: F403
from peftrec.config.sections import __all__  # noqa: F401
