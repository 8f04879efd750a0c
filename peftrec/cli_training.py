"""The ``peftrec`` commands that train: a shipped recipe run by name, the shipped configs, and a
saved model continued on new interactions.

    peftrec train sequential --config minilm_frozen_sequential train.epochs=3
    peftrec configs sequential
    peftrec update runs/yesterday/model --data interactions.csv --out runs/today/model

``peftrec train <task>`` calls the recipe's ``main`` with the rest of the command line, in this
process (one process, on the device Accelerate picks): it is ``python recipes/train_<task>.py``
for an installed peftrec. For several processes, let Accelerate launch the same recipe:
``accelerate launch -m peftrec_recipes.train_<task> --config <name> ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peftrec.cli_arguments import model_folder, positive_int
from peftrec.shipped import CONFIGS, config_names, load_recipe, recipe_tasks


def train(args: argparse.Namespace) -> int:
    from peftrec.tasks import TASKS
    from peftrec.training.recipe import USER_ERRORS  # torch and the rest: only when training

    recipe = load_recipe(TASKS[args.task].recipe)
    argv = [*(["--config", args.config] if args.config else []), *args.settings]
    saved, sys.argv = sys.argv, [f"peftrec train {args.task}", *argv]  # its usage and errors
    try:
        recipe.main(argv)
    except USER_ERRORS as error:  # as the recipe's own script reports them
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


def configs(args: argparse.Namespace) -> None:
    print(f"shipped configs ({CONFIGS}); run one: peftrec train <task> --config <name>")
    for task in [args.task] if args.task else recipe_tasks():
        print(f"{task}:")
        for name in config_names(task):
            print(f"  {name}")


def update_model(args: argparse.Namespace) -> None:
    from peftrec.training.update import update

    print(f"updating {args.model} ({args.epochs} epoch(s), warm start: {args.warm_start}) ...")
    metrics = update(
        args.model,
        args.data,
        args.out,
        items=args.items,
        users=args.users,
        epochs=args.epochs,
        warm_start=args.warm_start,
        settings=args.set,
        allow_fewer=args.allow_fewer,
        state=args.state,
        interaction_rating=args.interaction_rating,
    )
    score = next((k for k in metrics if k.startswith("valid_")), None)
    if score is not None:
        value = metrics[score]
        print(f"validation {score[6:]} {value:.4f} (best epoch {metrics['best_epoch']})")
    print(f"model saved to {args.out}")


def add_training_commands(commands) -> None:
    """``train``, ``configs`` and ``update``, added to the ``peftrec`` command's subparsers."""
    p = commands.add_parser(
        "train",
        help="train a model with a shipped recipe, by task and config name",
        description="Run the recipe of TASK with the rest of the command line, as "
        "`python recipes/train_<task>.py` would: --config NAME|FILE, then key.sub=value settings "
        "(`peftrec train TASK --help` lists every setting). One process; for several, "
        "`accelerate launch -m peftrec_recipes.train_<task> ...`.",
    )
    p.add_argument(
        "task",
        choices=recipe_tasks(),
        metavar="TASK",
        help=f"the recipe to run: {', '.join(recipe_tasks())}",
    )
    p.add_argument(
        "--config",
        metavar="NAME|FILE",
        help="a shipped config's name (`peftrec configs` lists them) or a YAML file",
    )
    p.add_argument(
        "settings",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the recipe's arguments: [--config NAME|FILE] [key.sub=value ...] [--help]",
    )
    p.set_defaults(run=train)
    p = commands.add_parser("configs", help="list the shipped recipe configs, by task")
    p.add_argument(
        "task", nargs="?", choices=recipe_tasks(), metavar="TASK", help="only this task's configs"
    )
    p.set_defaults(run=configs)
    p = commands.add_parser(
        "update",
        help="continue a saved model on new interactions (a warm start) into a new model folder",
    )
    p.add_argument("model", type=model_folder, help="the saved model to continue from")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="interactions to train on (CSV, TSV, Parquet, JSON Lines): the whole history so far, "
        "or the new window",
    )
    p.add_argument("--out", required=True, type=Path, help="the new model folder (must not exist)")
    p.add_argument(
        "--items", type=Path, default=None, help="items file (default: the model's catalogue)"
    )
    p.add_argument("--users", type=Path, default=None, help="users file (profile models)")
    p.add_argument(
        "--epochs", type=positive_int, default=2, help="epochs from the model (default 2)"
    )
    p.add_argument(
        "--warm-start",
        choices=["continue", "merge", "towers", "head"],
        default="continue",
        help="what the model's adapter does (train.warm_start; default continue)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another recipe setting, e.g. train.lr=5e-4 (repeat for several)",
    )
    p.add_argument(
        "--state",
        default=None,
        help="also train on what the model's service was told (its served state: an SQLite "
        "file or SQLAlchemy URL, e.g. <model>.state.sqlite): items, interactions and ratings "
        "up to now; the new model records where it stopped, and a service swapping to it "
        "carries the later writes over",
    )
    p.add_argument(
        "--interaction-rating",
        type=float,
        default=None,
        help="with --state: the rating a served interaction counts as (default: the highest "
        "rating in --data)",
    )
    p.add_argument(
        "--allow-fewer",
        action="store_true",
        help="write the new model even if --data leaves out users or items the model knows "
        "(they are dropped); by default such an update is refused",
    )
    p.set_defaults(run=update_model)
