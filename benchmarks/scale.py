"""How the app's costs grow with the catalogue (issue 27, part 3): add one item, change one item's
text, record one interaction, recommend for one user and for every user, and peak memory, on
synthetic catalogues of 10k, 100k and 1M items.

    python -m benchmarks.scale --out benchmarks/results/scale.md
    python -m benchmarks.scale --quick          # a smoke run: one small catalogue, in-process

What is built: for each catalogue size and each kind of user (a rating model, whose users are
rows of a table, and a sequential model, whose users are their histories), a saved model folder
on the tiny BERT of the tests (hidden 64, so 64-dim pooled texts) with a 64-dim head, ``USERS``
users (ml-1m's count) with ``HISTORY`` interactions each among the first ``TRAINED`` items (the
trained ones, with ID rows; the rest are items added by text), and items with generated text.
The language model never encodes the catalogue: every item's pooled encoding is drawn at random
and the saved vectors come from the head's towers over them (``trained_vectors``), as a
trained model's would come from its encodings.

What is timed: each size and model is measured in a fresh process (``--measure``), so its peak
memory is its own, with ``--threads`` threads for torch and BLAS. The folder is loaded, then the
network (the first write's cost); then each operation ``--repeats`` times through the public
API. "Add one item" is ``add_items`` of one new item with the language model's encode replaced
by a random pooled encoding (the bar is "without the LM encode"): the id and text checks, the
tokenizer's warning pass, the catalogue's growth, the item's vector from the head and the served
vectors' update are timed. "Change one item's text" re-adds a trained item under a new text (for
the sequential model this recomputes the users whose history holds it, found by a pass over
every interaction). "Record one interaction" is ``add_interactions`` of one item for one known
user. "Recommend" is ``recommend(user, k=10)``, exact, seen items left out; "all users" is one
``recommend_batch`` of every user. With FAISS installed, the same model then builds the
approximate index (``use_index``) and is timed again: build, load, recommend, all users,
recall@10 against the exact top 10 of every user, add one item. Times are wall-clock medians (and
90th percentiles) on a machine shared with other jobs; the load average is in the hardware line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import hardware_line, write_report
from benchmarks.scale_index import index_available, index_bars, index_section, measure_index
from benchmarks.timing import rss_mib, summary, timed

SIZES = (10_000, 100_000, 1_000_000)
USERS, TRAINED, HISTORY, DIM = 6040, 3706, 20, 64  # ml-1m's users and items
QUICK = {"sizes": (2_000,), "users": 40, "trained": 500, "repeats": 5}
MODELS = ("rating", "sequential")
BARS = (  # (what, model, catalogue size, median bar in ms)
    ("add one item", "add_item", 100_000, 10.0),
    ("recommend one user", "recommend", 1_000_000, 50.0),
)
GENRES = ("drama", "comedy", "action", "horror", "romance")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def item_text(k: int) -> str:
    """A generated item text in the tiny tokenizer's words."""
    return f"{'good' if k % 3 else 'bad'} film {k} {GENRES[k % 5]} {1950 + k % 70}"


# -- building a synthetic catalogue -------------------------------------------------------------


def make_model(backbone: Path, task: str, users: int, trained: int):
    from peftrec.config import AdapterConfig, BackboneConfig
    from peftrec.models.assembly import assemble, make_spec
    from peftrec.tasks import TASKS

    task_def = TASKS[task]
    cfg = task_def.config(
        backbone=BackboneConfig(name=str(backbone)), adapter=AdapterConfig(method="frozen")
    )
    cfg.model.dim = DIM  # the task's own model section, otherwise its defaults
    spec = make_spec(
        cfg.backbone, cfg.adapter, cfg.model, task=task, num_users=users, num_items=trained
    )
    if task_def.head_options is not None:
        spec.head = task_def.head_options(cfg, spec.head)
    return assemble(spec, adapter=cfg.adapter)


def build(folder: Path, backbone: Path, task: str, size: int, users: int, trained: int) -> Path:
    """A saved model folder whose catalogue has ``size`` items (see the module)."""
    import torch

    from peftrec.artifact.head_vectors import trained_vectors
    from peftrec.artifact.save import Catalog, save_artifact

    torch.manual_seed(0)
    model, tokenizer = make_model(backbone, task, users, trained)
    rng = np.random.default_rng(0)
    seen_items = rng.integers(0, trained, size=(users, HISTORY)).ravel()
    catalog = Catalog(
        user_ids=[f"u{k}" for k in range(users)],
        item_ids=[f"i{k}" for k in range(size)],
        item_texts=[item_text(k) for k in range(size)],
        seen_users=np.repeat(np.arange(users), HISTORY),
        seen_items=seen_items,
        rating_scale=(1.0, 5.0) if task == "rating" else None,
    )
    encodings = torch.from_numpy(rng.standard_normal((size, model.head.text_dim), np.float32))
    vectors, text = trained_vectors(model, tokenizer, catalog, item_text=encodings)
    if vectors is None:
        raise SystemExit(f"the {task} head does not serve from vectors")
    return save_artifact(folder, model, tokenizer, catalog, vectors=vectors, item_text=text)


# -- measuring one folder -----------------------------------------------------------------------


def measure(folder: Path, repeats: int) -> dict:
    """Load ``folder`` and time each operation (see the module); peak memory of this process."""
    import torch

    from peftrec.app.recommender import Recommender

    started = time.perf_counter()
    rec = Recommender.from_pretrained(folder)
    load_s = time.perf_counter() - started
    loaded_mib = rss_mib()
    started = time.perf_counter()
    engine = rec.engine  # the network, and the saved vectors adopted
    network_s = time.perf_counter() - started
    rng = np.random.default_rng(1)
    dim = engine.model.head.text_dim

    def encode(texts):  # stands for the LM: a random pooled encoding per text
        return torch.from_numpy(rng.standard_normal((len(texts), dim), np.float32))

    engine._encode = encode
    size = len(rec.item_ids)
    started = time.perf_counter()  # the first write grows the tables (one copy of each)
    rec.add_items({"warm-up": item_text(size)})
    first_write_s = time.perf_counter() - started
    users = [str(u) for u in rng.choice(rec.user_ids, size=repeats, replace=False)]
    trained = rec.num_trained_items
    items = [f"i{k}" for k in rng.choice(trained, size=repeats, replace=False)]
    results = {
        "items": size,
        "users": len(rec.user_ids),
        "load_s": load_s,
        "network_s": network_s,
        "first_write_s": first_write_s,
        "rss_after_load_mib": loaded_mib,
        "add_item": summary(
            timed(lambda k: rec.add_items({f"new{k}": item_text(size + k)}), range(repeats))
        ),
        "change_item": summary(
            timed(lambda i: rec.add_items({i: f"good film changed {GENRES[0]}"}), items)
        ),
        "interaction": summary(timed(lambda u: rec.add_interactions({u: [items[0]]}), users)),
        "recommend": summary(timed(lambda u: rec.recommend(u, k=10), users)),
    }
    started = time.perf_counter()
    everyone = rec.recommend_batch(rec.user_ids, k=10)
    results["all_users_s"] = time.perf_counter() - started
    assert len(everyone) == len(rec.user_ids)
    results["peak_rss_mib"] = rss_mib("VmHWM")
    if index_available():
        results["index"] = measure_index(rec, everyone, rng, repeats, item_text)
    return results


def measure_apart(folder: Path, repeats: int, threads: int) -> dict:
    """:func:`measure` in a fresh process (its own peak memory, ``threads`` threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.scale", "--measure", str(folder)]
        command += ["--repeats", str(repeats), "--threads", str(threads), "--json", str(out)]
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())


# -- the report ---------------------------------------------------------------------------------


def table(results: list[dict], task: str) -> list[str]:
    def cell(r: dict, key: str) -> str:
        return f"{r[key]['median_ms']:.2f} / {r[key]['p90_ms']:.2f}"

    lines = [
        "| items | load (s) | network (s) | first write (s) | add one item (ms) | "
        "change one item's text (ms) | record one interaction (ms) | recommend one user (ms) | "
        "all users (s; ms per user) | RSS after load / peak (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in results if r["task"] == task):
        per_user = 1000 * r["all_users_s"] / r["users"]
        lines.append(
            f"| {r['items']:,} | {r['load_s']:.2f} | {r['network_s']:.2f} | "
            f"{r['first_write_s']:.2f} | "
            f"{cell(r, 'add_item')} | {cell(r, 'change_item')} | {cell(r, 'interaction')} | "
            f"{cell(r, 'recommend')} | {r['all_users_s']:.1f}; {per_user:.2f} | "
            f"{r['rss_after_load_mib']:.0f} / {r['peak_rss_mib']:.0f} |"
        )
    return lines


def bars(results: list[dict]) -> list[str]:
    lines = []
    for what, key, size, bar in BARS:
        for r in (r for r in results if r["items"] == size):
            got = r[key]["median_ms"]
            verdict = "met" if got <= bar else "**not met**"
            lines.append(
                f"- {what}, {r['task']} model, {size:,} items: median {got:.2f} ms "
                f"(bar <= {bar:g} ms): {verdict}"
            )
    lines += index_bars(results)
    return lines or ["- (the bars' catalogue sizes were not run)"]


def command_options(args: argparse.Namespace) -> str:
    """The options a report was made with (the defaults left out)."""
    options = " --quick" if args.quick else ""
    if args.sizes:
        options += " --sizes " + " ".join(map(str, args.sizes))
    if list(args.models) != list(MODELS):
        options += " --models " + " ".join(args.models)
    return options


def report(results: list[dict], args: argparse.Namespace, hardware: str) -> str:
    users = results[0]["users"] if results else 0
    lines = [
        "# How the app's costs grow with the catalogue",
        "",
        f"Made by `python -m benchmarks.scale{command_options(args)}` "
        "(issue 27, part 3); what is built and what is timed is in the module's docstring. "
        f"{users:,} users with {HISTORY} interactions each, a {DIM}-dim head on 64-dim pooled "
        f"texts (tiny BERT), random pooled encodings instead of the language model's; "
        f"{args.repeats} repetitions of each operation (median / 90th percentile), "
        f"{args.threads} thread(s) for torch and BLAS, "
        + ("in this process." if args.in_process else "each size in a fresh process.")
        + f" Machine: {hardware}.",
        "",
        "## Bars",
        "",
        *bars(results),
    ]
    for task, who in (
        ("rating", "a rating model (users are rows of a table)"),
        ("sequential", "a sequential model (users are their histories)"),
    ):
        if any(r["task"] == task for r in results):
            lines += ["", f"## {who.capitalize()}", "", *table(results, task)]
    lines += [
        "",
        "Load: the folder read and checked (numpy, no network). Network: what the first write "
        "waits for: the language model loaded (mostly imports) and the saved vectors adopted "
        "(no pass over the catalogue). First write: one item added (untimed in the columns "
        "after it); it grows each table past the size it was loaded at, a copy of every row "
        "(the tables double their capacity, so the next copy comes after as many rows again). "
        "Every later write appends or overwrites only its rows, so its cost does not grow with "
        "the catalogue. Recommending is exact: the user's vector against every item's (one "
        "matrix product, then a partial sort), so it grows with the catalogue, as does memory "
        "(the vectors, pooled texts, ids and texts of every item). Changing a known item's text "
        "in the sequential model finds the users whose history holds it by a pass over every "
        "interaction and recomputes their states: it grows with the interactions, not the "
        "catalogue. Recording an interaction in the rating model only counts the item as seen "
        "(a known user keeps their vector); in the sequential model it recomputes that user's "
        "state. What is served after each write equals a full recompute up to float32 rounding "
        "(`tests/unit/test_incremental.py`).",
    ]
    lines += index_section(results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="the Markdown report (and .json)")
    parser.add_argument("--quick", action="store_true", help="one small catalogue, in-process")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=None, help="times each operation runs")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--in-process", action="store_true", help="measure in this process")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one folder (a child)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # where a child writes
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.measure is not None:
        args.json.write_text(json.dumps(measure(args.measure, args.repeats)))
        return
    quick = QUICK if args.quick else {}
    sizes = args.sizes or quick.get("sizes", SIZES)
    users, trained = quick.get("users", USERS), quick.get("trained", TRAINED)
    args.repeats = args.repeats or quick.get("repeats", 30)
    args.in_process = args.in_process or args.quick
    from benchmarks.tiny import write_tiny_bert

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        backbone = write_tiny_bert(Path(tmp) / "tiny-bert")
        for size in sizes:
            for task in args.models:
                started = time.perf_counter()
                folder = build(Path(tmp) / f"{task}-{size}", backbone, task, size, users, trained)
                built = time.perf_counter() - started
                print(f"{task}, {size:,} items: built in {built:.1f} s", flush=True)
                if args.in_process:
                    result = measure(folder, args.repeats)
                else:
                    result = measure_apart(folder, args.repeats, args.threads)
                results.append({"task": task, **result})
                print(json.dumps(results[-1]), flush=True)
                shutil.rmtree(folder)
    hardware = hardware_line(load=True)
    data = {"results": results, "hardware": hardware, "quick": args.quick}
    write_report(args.out, report(results, args, hardware), data)


if __name__ == "__main__":
    main()
