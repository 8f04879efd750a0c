"""A toy task, as a task folder under ``peftrec/tasks/`` would hold it: will a user like an item,
given what they have interacted with? Its user is their *history* (no user table), so the app
serves it, folds in new interactions and saves it through the traits alone."""

from peftrec.tasks import Reported, Task
from tests.unit.taste_task.config import TasteRecipeConfig
from tests.unit.taste_task.head import TasteHead


def taste_task(recipe: str) -> Task:
    """The task's one entry in :data:`peftrec.tasks.TASKS`."""
    return Task(
        name="taste",
        title="Taste",
        summary="will a user like an item, given the items they interacted with",
        head=TasteHead,
        config=TasteRecipeConfig,
        recipe=recipe,
        protocols=("p1",),
        metric="preference",
        reported=(Reported("accuracy", "accuracy", True),),
    )
