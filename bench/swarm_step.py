"""A Docker Swarm service under a step of load: tierscale's HPA policy against the threshold loop the
community Swarm autoscalers run (±1 replica per 30 s loop), the same service, the same step, one run.

A single-node swarm on a dockerd in a network namespace (tests/helpers/dockerd.py); a replicated service
of the demo image, its port published in host mode, created at 1 task for each part. The load
(tierscale.loadgen, open loop) goes through the group's nginx: --low req/s for 10 s, then --high req/s.
The target is --target req/s per task, so the step needs ceil(high / target) tasks.

1. tierscale: `tier: swarm`, `policy: hpa`, `requests_per_replica` target --target (HPA's default
   behavior: scale-up by max(4 pods, 100 %) per 15 s).
2. The threshold loop (jcwimer/docker-swarm-autoscaler, gianarb/orbiter: one step per loop on a
   threshold): the same controller with `policy: threshold`, metric requests_per_replica, upper
   --target, lower target/3, step 1, cooldown --loop s: +1 task per loop while above.

Measured per part: seconds from the step until the needed count of tasks is ready in the balancer,
failed requests, requests sent; the ratio of the two times.

    .venv/bin/python bench/swarm_step.py [--low 2] [--high 40] [--target 5] [--loop 30]

Needs root, dockerd (scripts/setup/docker.sh), nginx and the demo image; everything it starts (the
namespaced engine, its bridge, the services, nginx) is removed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers.dockerd import NamespacedDockerd, demo_image_built, namespaced_dockerd, shared_bridge  # noqa: E402
from helpers.e2e import group_config, wait_for  # noqa: E402
from tierscale.controller.down import down  # noqa: E402
from tierscale.loadgen import LoadRunner  # noqa: E402
from tierscale.providers.docker_image import DEMO_IMAGE  # noqa: E402
from tierscale.service import BackgroundController  # noqa: E402


def part(engine: NamespacedDockerd, tmp: Path, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    svc = f"step-{policy}-" + secrets.token_hex(2)
    engine.docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", svc, "--endpoint-mode", "dnsrr",
        "--publish", "mode=host,target=8080", "--replicas", "1", DEMO_IMAGE,
    )  # fmt: skip
    need = math.ceil(args.high / args.target)
    if policy == "hpa":
        extra = ""
        metrics = f"[{{type: requests_per_replica, target: {args.target:g}}}]"
    else:
        lower = args.target / 3
        extra = (
            "    policy: threshold\n"
            f"    threshold: {{metric: requests_per_replica, upper: {args.target:g}, lower: {lower:g}, "
            f"step: 1, cooldown: {args.loop:g}s}}\n"
        )
        metrics = f"[{{type: requests_per_replica, target: {args.target:g}}}]"
    cfg, _ = group_config(
        tmp / policy,
        "swarm",
        f"{{service: {svc}, manager: 'tcp://{engine.address}:2375', port: 8080}}",
        name=f"st-{policy}",
        min_=1,
        max_=need + 2,
        metrics=metrics,
        extra=extra,
    )
    name = cfg.groups[0].name
    rate = {"rps": args.low}
    try:
        with BackgroundController(cfg) as bg:
            wait_for(lambda: bg.status(name)["ready"] == 1, 90, what="the first task ready")
            url = f"http://{cfg.groups[0].balancer.listen}/work?ms=5"
            budget = 30 + args.loop * (need + 2)
            with LoadRunner(url, lambda t: rate["rps"], 10 + budget + 5, timeout=15) as runner:
                time.sleep(10)  # the low rate, part of the measured scenario: not a wait for a condition
                rate["rps"] = args.high
                step = time.monotonic()
                wait_for(lambda: bg.status(name)["ready"] >= need, budget, interval=0.2, what=f"{need} ready")
                took = time.monotonic() - step
                runner.stop()
            result = runner.result(timeout=60)
        return {"policy": policy, "need": need, "seconds": took, "failed": result.failed, "sent": result.sent}
    finally:
        down(cfg)
        engine.docker("service", "rm", svc, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--low", type=float, default=2.0)
    ap.add_argument("--high", type=float, default=40.0)
    ap.add_argument("--target", type=float, default=5.0)
    ap.add_argument("--loop", type=float, default=30.0)
    args = ap.parse_args()
    demo_image_built()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        br = stack.enter_context(shared_bridge())
        address = br.host(41)
        engine = stack.enter_context(
            namespaced_dockerd(br, host=41, swarm=True, extra_args=["-H", f"tcp://{address}:2375"])
        )
        engine.load_images(DEMO_IMAGE)
        rows = [part(engine, Path(tmp), p, args) for p in ("hpa", "threshold")]
    print(f"swarm service, step {args.low:g} -> {args.high:g} req/s, target {args.target:g} req/s per task:")
    for r in rows:
        print(
            f"  {r['policy']:>9}: {r['need']} tasks ready {r['seconds']:.1f} s after the step; "
            f"{r['failed']} failed of {r['sent']}"
        )
    print(f"  threshold loop / tierscale: {rows[1]['seconds'] / rows[0]['seconds']:.1f}x")


if __name__ == "__main__":
    main()
