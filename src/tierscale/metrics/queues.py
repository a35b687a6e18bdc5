"""`redis` and `rabbitmq`: a queue's depth as the group's total (KEDA's redis and rabbitmq scalers).

The readers live beside this (`redis_queue.py`, `rabbitmq_queue.py`); here they become metric sources
that say why a read failed, so that the freshness rules and the events can name it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from tierscale.config.settings import MetricSpec
from tierscale.metrics.base import Observation
from tierscale.metrics.prometheus import external_input, with_login
from tierscale.metrics.rabbitmq_queue import rabbitmq_depth
from tierscale.policy.types import MetricInput


@dataclass(frozen=True)
class RedisSource:
    spec: MetricSpec
    timeout: float

    async def read(self, obs: Observation) -> MetricInput:
        # Imported here: redis-py is an extra (`tierscale[redis]`); a group without a redis metric
        # must not need it.
        try:
            from tierscale.metrics.redis_queue import redis_depth
        except ImportError as exc:
            return external_input(
                self.spec, None, f"redis client missing ({exc}): pip install 'tierscale[redis]'"
            )
        s = self.spec
        url, error = with_login(s)
        if error is not None:
            return external_input(s, None, error)
        value, error = await redis_depth(url, s.kind or "list", s.key or "", s.consumer_group, self.timeout)
        return external_input(s, value, error)


@dataclass(frozen=True)
class RabbitmqSource:
    spec: MetricSpec
    session: Callable[[], aiohttp.ClientSession]
    timeout: float

    async def read(self, obs: Observation) -> MetricInput:
        s = self.spec
        url, error = with_login(s)
        if error is not None:
            return external_input(s, None, error)
        value, error = await rabbitmq_depth(
            self.session(), url, s.vhost or "/", s.queue or "", s.count or "messages", self.timeout
        )
        return external_input(s, value, error)
