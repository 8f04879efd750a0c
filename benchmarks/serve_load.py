"""A bounded load test of ``peftrec serve``: N concurrent clients, a fixed number of requests.

    python -m benchmarks.serve_load runs/minilm_lora_rating/model --clients 8 --requests 4000 \\
        --out benchmarks/results/serve_load.md
    python -m benchmarks.serve_load runs/minilm_lora_rating/model --clients 4 --add-items 1000 \\
        --out benchmarks/results/serve_load_writes.md

Starts the service on a free port on 127.0.0.1 (a subprocess running ``peftrec serve``), waits
for ``/health``, sends ``WARMUP`` requests, then the clients (threads, one keep-alive connection
each) share ``--requests`` ``POST /recommend`` calls (k=10, known users drawn at random, seen
items excluded). Latency is measured per request at the client, from sending to the parsed
reply. The clients run on the same machine as the server and compete with it for its cores.

With ``--add-items N``, a second phase repeats the reads while one more client adds N new items
(``POST /items``, ``--batch`` per request, each encoded by the language model): the reads'
latencies beside those of the first phase show whether reads wait behind writes. The service
keeps its writes in a temporary state (``--state``), as a deployed one would.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import hardware_line, write_report

WARMUP = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(folder: Path, port: int, state: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "peftrec.cli", "serve", str(folder), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--state", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"peftrec serve exited with {process.returncode}") from None
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the service did not answer /health within 120 s")


def client(port: int, work: queue.Queue, latencies: list, failures: list, until=None) -> None:
    """Reads from ``work`` until it is empty (or, with ``until``, until that event is set)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    while until is None or not until.is_set():
        try:
            user = work.get_nowait()
        except queue.Empty:
            return
        body = json.dumps({"user": user, "k": 10})
        started = time.perf_counter()
        try:
            connection.request("POST", "/recommend", body, headers)
            response = connection.getresponse()
            reply = json.loads(response.read())
            if response.status != 200 or len(reply["items"]) != 10:
                failures.append(response.status)
        except (OSError, http.client.HTTPException, ValueError) as err:
            failures.append(repr(err))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append(time.perf_counter() - started)


def writer(port: int, count: int, batch: int, done: threading.Event, out: dict) -> None:
    """Adds ``count`` new items, ``batch`` per ``POST /items``, then sets ``done``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    started, failed = time.perf_counter(), 0
    for start in range(0, count, batch):
        items = {
            f"load-{k}": f"Load test film {k} ({1950 + k % 70}). Genres: Drama, Comedy."
            for k in range(start, min(start + batch, count))
        }
        connection.request("POST", "/items", json.dumps({"items": items}), headers)
        response = connection.getresponse()
        response.read()
        failed += response.status != 200
    out.update(seconds=time.perf_counter() - started, failed=failed)
    done.set()


def run(
    port: int, users: list[str], clients: int, requests: int, add_items: int = 0, batch: int = 10
) -> tuple[list, list, float, dict]:
    work: queue.Queue = queue.Queue()
    for user in users[:requests] if not add_items else users * 50:
        work.put(user)
    latencies, failures, written = [], [], {}
    done = threading.Event() if add_items else None
    threads = [
        threading.Thread(target=client, args=(port, work, latencies, failures, done))
        for _ in range(clients)
    ]
    if add_items:
        threads.append(
            threading.Thread(target=writer, args=(port, add_items, batch, done, written))
        )
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, time.perf_counter() - started, written


def row(label: str, latencies: list, failures: list, seconds: float) -> str:
    ms = 1000 * np.array(latencies)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return (
        f"| {label} | {len(latencies) + len(failures)} | {len(failures)} | "
        f"{len(latencies) / seconds:.0f} req/s | {p50:.1f} ms | {p90:.1f} ms | {p99:.1f} ms | "
        f"{ms.max():.1f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    parser.add_argument("--add-items", type=int, default=0, help="phase 2: items added meanwhile")
    parser.add_argument("--batch", type=int, default=10, help="items per POST /items")
    args = parser.parse_args()

    known = json.loads((args.model / "catalog.json").read_text())["user_ids"]
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(known, size=args.requests + WARMUP)]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process = start_service(args.model, port, Path(tmp) / "state.sqlite")
        try:
            run(port, users[:WARMUP], 1, WARMUP)
            reads = run(port, users[WARMUP:], args.clients, args.requests)
            during = (
                run(port, users[WARMUP:], args.clients, 0, args.add_items, args.batch)
                if args.add_items
                else None
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    lines = [
        f"# Load test of `peftrec serve`: {args.model}",
        "",
        f"{args.clients} concurrent clients (keep-alive), {args.requests} `POST /recommend` "
        f"(k=10, random known users) after {WARMUP} warm-up requests; clients and server on "
        f"one machine: {hardware_line(load=True)} at the end; Python "
        f"{platform.python_version()}.",
        "",
        "| phase | requests | failed | throughput | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("reads alone", *reads[:3]),
    ]
    if during is not None:
        written = during[3]
        lines[2] += (
            f" Then the same reads while one more client adds {args.add_items} new items "
            f"({args.batch} per `POST /items`, encoded by the language model, each committed "
            f"to the service's SQLite state): {written['seconds']:.1f} s for the items, "
            f"{written['failed']} failed writes."
        )
        lines.append(row(f"reads while {args.add_items} items are added", *during[:3]))
    failures = reads[1] + (during[1] if during is not None else [])
    write_report(args.out, "\n".join([*lines, ""]))
    if failures:
        print(f"failures (first 5): {failures[:5]}")


if __name__ == "__main__":
    main()
