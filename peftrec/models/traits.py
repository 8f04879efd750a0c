"""What the rest of peftrec reads of a task, instead of its name: its :class:`Traits`.

Serving, saving, the app and the shared training steps ask a head's traits (``head.traits``, or
:func:`peftrec.tasks.traits_of` for a saved model's spec), never which task it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

User = Literal["row", "history", "labelled history"]


@dataclass(frozen=True)
class Traits:
    user: User = "row"
    """What a user is: a row of a trained user table (new users are folded in from ratings), their
    history of items (the head's ``history_users`` makes their vector: no table), or their history
    with a liked / not liked label per item (the head's ``users_of_histories``)."""
    ratings: bool = False
    """The scores are ratings: the head's offset is the global mean, and served scores are
    clipped to the training data's scale."""
    pairs: bool = False
    """The head reads each (user, item) pair as one text (a cross-encoder): no vector stands for a
    user or an item, so the head scores every pair itself."""

    @property
    def user_table(self) -> bool:
        """Users are rows of a trained table."""
        return self.user == "row"

    @property
    def history(self) -> bool:
        """A user is their (unlabelled) history: their vector is the head's state after it."""
        return self.user == "history"

    @property
    def labelled(self) -> bool:
        """A user is their labelled history; the run reads records (history, target, label)."""
        return self.user == "labelled history"
