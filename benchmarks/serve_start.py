"""How long an app waits for its first recommendation: import, load, first ``recommend``.

    python -m benchmarks.serve_start runs/minilm_lora_rating/model \\
        --out benchmarks/results/serve_start.md

Each repeat is a fresh Python process that imports peftrec, loads the model folder and asks for
one known user's top 10 (then a second one), timed inside the process. Two ways, alternated so
that both see the same machine load: *served* (the folder as saved, with its vectors) and
*network* (a copy without ``serving.safetensors``, as before peftrec saved vectors: the LM is
loaded and encodes the catalogue). Medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import hardware_line, write_report

PROBE = """
import json, sys, time
started = time.perf_counter()
from peftrec import Recommender
imported = time.perf_counter()
rec = Recommender.from_pretrained(sys.argv[1])
loaded = time.perf_counter()
rec.recommend(sys.argv[2], k=10)
first = time.perf_counter()
rec.recommend(sys.argv[2], k=10)
second = time.perf_counter()
print(json.dumps({
    "import": imported - started, "load": loaded - imported, "first": first - loaded,
    "total": first - started, "second": second - first,
    "torch_imported": "torch" in sys.modules,
}))
"""


def probe(folder: Path, user: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), user],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder")
    parser.add_argument("--user", default="196", help="a known user id (default 196)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    args = parser.parse_args()
    if not (args.model / "serving.safetensors").is_file():
        raise SystemExit(f"{args.model}: no serving.safetensors (save it with this peftrec)")

    with tempfile.TemporaryDirectory() as tmp:
        network = Path(tmp) / "model"
        shutil.copytree(args.model, network)
        (network / "serving.safetensors").unlink()
        runs = {"served": [], "network": []}
        for _ in range(args.repeats):
            runs["served"].append(probe(args.model, args.user))
            runs["network"].append(probe(network, args.user))
    lines = [
        f"# Time to the first recommendation: {args.model}",
        "",
        f"Fresh process per repeat, median of {args.repeats}, the two ways alternated; "
        f"{hardware_line(load=True)} at the end; Python {platform.python_version()}.",
        "",
        "| way | import | from_pretrained | first recommend | **total** | second recommend "
        "| torch imported |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for way, results in runs.items():
        med = {k: float(np.median([r[k] for r in results])) for k in results[0] if "_" not in k}
        lines.append(
            f"| {way} | {med['import']:.3f} s | {med['load']:.3f} s | {med['first']:.3f} s "
            f"| **{med['total']:.3f} s** | {1000 * med['second']:.1f} ms "
            f"| {'yes' if results[0]['torch_imported'] else 'no'} |"
        )
    ratio = np.median([r["total"] for r in runs["network"]]) / np.median(
        [r["total"] for r in runs["served"]]
    )
    lines += [
        "",
        f"Served from the saved vectors, the first recommendation comes {ratio:.0f}x sooner.",
    ]
    write_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
