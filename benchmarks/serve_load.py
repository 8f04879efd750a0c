"""A bounded load test of ``peftrec serve``: N concurrent clients, a fixed number of requests.

    python -m benchmarks.serve_load runs/minilm_lora_rating/model --clients 8 --requests 4000 \\
        --out benchmarks/results/serve_load.md

Starts the service on a free port on 127.0.0.1 (a subprocess running ``peftrec serve``), waits
for ``/health``, sends ``WARMUP`` requests, then the clients (threads, one keep-alive connection
each) share ``--requests`` ``POST /recommend`` calls (k=10, known users drawn at random, seen
items excluded). Latency is measured per request at the client, from sending to the parsed
reply. The clients run on the same machine as the server and compete with it for its cores.
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


def start_service(folder: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "peftrec.cli", "serve", str(folder), "--port", str(port)],
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


def client(port: int, work: queue.Queue, latencies: list, failures: list) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    while True:
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


def run(port: int, users: list[str], clients: int, requests: int) -> tuple[list, list, float]:
    work: queue.Queue = queue.Queue()
    for user in users[:requests]:
        work.put(user)
    latencies, failures = [], []
    threads = [
        threading.Thread(target=client, args=(port, work, latencies, failures))
        for _ in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a saved model folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    args = parser.parse_args()

    known = json.loads((args.model / "catalog.json").read_text())["user_ids"]
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(known, size=args.requests + WARMUP)]
    port = free_port()
    process = start_service(args.model, port)
    try:
        run(port, users[:WARMUP], 1, WARMUP)
        latencies, failures, seconds = run(port, users[WARMUP:], args.clients, args.requests)
    finally:
        process.terminate()
        process.wait(timeout=30)
    ms = 1000 * np.array(latencies)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    report = "\n".join(
        [
            f"# Load test of `peftrec serve`: {args.model}",
            "",
            f"{args.clients} concurrent clients (keep-alive), {args.requests} `POST /recommend` "
            f"(k=10, random known users) after {WARMUP} warm-up requests; clients and server on "
            f"one machine: {hardware_line(load=True)} at the end; Python "
            f"{platform.python_version()}.",
            "",
            "| requests | failed | throughput | p50 | p90 | p99 | max |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(latencies) + len(failures)} | {len(failures)} | {len(latencies) / seconds:.0f}"
            f" req/s | {p50:.1f} ms | {p90:.1f} ms | {p99:.1f} ms | {ms.max():.1f} ms |",
            "",
        ]
    )
    write_report(args.out, report)
    if failures:
        print(f"failures (first 5): {failures[:5]}")


if __name__ == "__main__":
    main()
