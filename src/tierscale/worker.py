"""The demo worker: consumes a Redis list or a RabbitMQ queue at a set rate, so a queue-driven group has
real work to scale on.

    python -m tierscale.worker --redis redis://127.0.0.1:6379/0 --list jobs --rate 20
    python -m tierscale.worker --amqp amqp://guest:guest@127.0.0.1:5672/%2F --queue jobs --rate 20

Each message "takes" 1/rate seconds. SIGTERM finishes the message in hand, then exits 0: a worker
scaled in loses no job (RabbitMQ messages are acked only once done, one in flight per worker, so a
worker killed mid-job hands its message back to the broker). A broker that goes away is retried every
second. Needs `tierscale[worker]` (redis-py, pika).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

Stopping = Callable[[], bool]


def consume_redis(url: str, key: str, rate: float, stopping: Stopping) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    done = 0
    while not stopping():
        try:
            job = client.blpop([key], timeout=1)  # a short block: SIGTERM is seen within a second
        except (redis.RedisError, OSError) as exc:
            _retrying(exc)
            continue
        if job is None:
            continue
        time.sleep(1.0 / rate)
        done = _count(done)
    return done


def consume_amqp(url: str, queue: str, rate: float, stopping: Stopping) -> int:
    import pika
    import pika.exceptions

    done = 0
    while not stopping():
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPError as exc:
            _retrying(exc)
            continue
        try:
            channel = conn.channel()
            channel.queue_declare(queue, durable=True)
            channel.basic_qos(prefetch_count=1)  # one unacked message per worker: the rest wait for others

            def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
                nonlocal done
                time.sleep(1.0 / rate)
                ch.basic_ack(method.delivery_tag)
                done = _count(done)

            channel.basic_consume(queue, on_message)
            while not stopping():
                conn.process_data_events(time_limit=1)  # returns each second: SIGTERM is seen
            conn.close()
        except pika.exceptions.AMQPError as exc:
            _retrying(exc)
    return done


def _retrying(exc: BaseException) -> None:
    print(f"worker: {type(exc).__name__}: {exc}; retrying", file=sys.stderr, flush=True)
    time.sleep(1)


def _count(done: int) -> int:
    done += 1
    if done % 100 == 0:
        print(f"worker: {done} jobs done", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tierscale.worker", description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--redis", help="redis://HOST:PORT/DB (with --list)")
    source.add_argument("--amqp", help="amqp://USER:PASS@HOST:PORT/VHOST (with --queue)")
    ap.add_argument("--list", help="the Redis list to pop jobs from")
    ap.add_argument("--queue", help="the RabbitMQ queue to consume (declared durable if missing)")
    ap.add_argument("--rate", type=float, default=10.0, help="jobs per second this worker handles")
    ap.add_argument(
        "--port", type=int, default=None, help="ignored: the process tier hands every replica one"
    )
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be > 0")
    if args.redis and not args.list:
        ap.error("--redis needs --list")
    if args.amqp and not args.queue:
        ap.error("--amqp needs --queue")
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.redis:
        done = consume_redis(args.redis, args.list, args.rate, lambda: stopping)
    else:
        done = consume_amqp(args.amqp, args.queue, args.rate, lambda: stopping)
    print(f"worker: stopping after {done} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
