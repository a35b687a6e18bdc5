"""The demo worker: consumes a Redis list at a set rate, so a queue-driven group has real work to scale on.

    python -m tierscale.worker --redis redis://127.0.0.1:6379/0 --list jobs --rate 20

Each message "takes" 1/rate seconds. SIGTERM finishes the message in hand, then exits 0: a worker
scaled in loses no job. Standard library plus redis-py (`tierscale[redis]`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import redis


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tierscale.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    ap.add_argument("--list", required=True, help="the list to pop jobs from")
    ap.add_argument("--rate", type=float, default=10.0, help="jobs per second this worker handles")
    ap.add_argument(
        "--port", type=int, default=None, help="ignored: the process tier hands every replica one"
    )
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be > 0")
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client = redis.Redis.from_url(args.redis, socket_timeout=5, socket_connect_timeout=5)
    done = 0
    while not stopping:
        try:
            job = client.blpop([args.list], timeout=1)  # a short block: SIGTERM is seen within a second
        except (redis.RedisError, OSError) as exc:
            print(f"worker: {exc}; retrying", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        if job is None:
            continue
        time.sleep(1.0 / args.rate)
        done += 1
        if done % 100 == 0:
            print(f"worker: {done} jobs done", flush=True)
    print(f"worker: stopping after {done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
