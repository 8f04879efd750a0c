"""The approximate index in ``benchmarks/scale.py`` (issue 27, part 4): built on the same saved
model after the exact measurements, then timed and checked against the exact top 10."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import rss_mib, summary, timed

INDEX_RECALL = 0.95  # what the index's probes are calibrated to (recall@10 on sample users)
INDEX_BAR = ("recommend one user with the index", 1_000_000, 5.0, 0.95)  # ms, recall@10


def index_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def measure_index(rec, exact: list, rng, repeats: int, item_text) -> dict:
    """The approximate index (``use_index``): build, recommend one user, all users, add one item,
    the saved index loaded again, recall@10 against ``exact`` (every user's exact top 10);
    ``item_text(k)`` writes the text of a new item."""
    from peftrec.app.index import ItemIndex
    from peftrec.artifact.vectors import INDEX_FILE

    size = len(rec.item_ids)
    started = time.perf_counter()
    rec.use_index(above=1, recall=INDEX_RECALL)
    build_s = time.perf_counter() - started
    users = [str(u) for u in rng.choice(rec.user_ids, size=repeats, replace=False)]
    recommend = summary(timed(lambda u: rec.recommend(u, k=10), users))
    started = time.perf_counter()
    found = rec.recommend_batch(rec.user_ids, k=10)
    all_users_s = time.perf_counter() - started
    hits = [
        len({i for i, _ in f} & {i for i, _ in e}) / 10 for f, e in zip(found, exact, strict=True)
    ]
    add_item = summary(
        timed(lambda k: rec.add_items({f"indexed{k}": item_text(size + k)}), range(repeats))
    )
    with tempfile.TemporaryDirectory() as tmp:
        rec.index.save(Path(tmp))
        vectors = rec._served()
        started = time.perf_counter()
        ItemIndex.load(Path(tmp) / INDEX_FILE, vectors.item_vectors, vectors.item_biases)
        load_s = time.perf_counter() - started
    return {
        "lists": rec.index.lists,
        "probes": rec.index.probes,
        "build_s": build_s,
        "load_s": load_s,
        "recommend": recommend,
        "all_users_s": all_users_s,
        "recall_at_10": float(np.mean(hits)),
        "add_item": add_item,
        "peak_rss_mib": rss_mib("VmHWM"),
    }


def index_bars(results: list[dict]) -> list[str]:
    """The index's bar, for each result at its catalogue size that was measured with it."""
    lines = []
    what, size, bar, least = INDEX_BAR
    for r in (r for r in results if r["items"] == size and "index" in r):
        got, recall = r["index"]["recommend"]["median_ms"], r["index"]["recall_at_10"]
        verdict = "met" if got <= bar and recall >= least else "**not met**"
        lines.append(
            f"- {what}, {r['task']} model, {size:,} items: median {got:.2f} ms at recall@10 "
            f"{recall:.3f} (bar <= {bar:g} ms at >= {least}): {verdict}"
        )
    return lines


def index_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | items | lists / probes | build (s) | load (s) | recommend one user (ms) | "
        "all users (s) | recall@10 (all users) | add one item (ms) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in results if "index" in r):
        x = r["index"]
        lines.append(
            f"| {r['task']} | {r['items']:,} | {x['lists']} / {x['probes']} | "
            f"{x['build_s']:.1f} | {x['load_s']:.2f} | {x['recommend']['median_ms']:.2f} / "
            f"{x['recommend']['p90_ms']:.2f} | {x['all_users_s']:.1f} | "
            f"{x['recall_at_10']:.3f} | {x['add_item']['median_ms']:.2f} / "
            f"{x['add_item']['p90_ms']:.2f} | {x['peak_rss_mib']:.0f} |"
        )
    return lines


def index_section(results: list[dict]) -> list[str]:
    """The report's section on the index (nothing when no result was measured with it)."""
    if not any("index" in r for r in results):
        return []
    return [
        "",
        "## With the approximate index (`Recommender.use_index`)",
        "",
        *index_table(results),
        "",
        "FAISS inverted lists (`IndexIVFFlat`, inner product over `[q_i, b_i]` against "
        "`[p_u, 1]`, so the item bias is in the ranking), `sqrt(items)` lists, the probes "
        f"calibrated at build time to recall@10 >= {INDEX_RECALL} on up to 1,000 sample users "
        "(doubling from 1, then halving the gap). Build: k-means, every item added and the "
        "calibration. Load: the "
        "saved centroids read and every item assigned to its list again (what "
        "`from_pretrained` of a folder saved with an index does). Recall@10: every user's "
        "top 10 (seen items left out) against the exact top 10 above; the calibration "
        "sample is among these users. Add one item: as above, and the item put into its "
        "list. The item vectors are the towers' outputs over random pooled encodings, which "
        "have less cluster structure than a trained model's, so the probes needed here are "
        "a pessimistic case.",
    ]
