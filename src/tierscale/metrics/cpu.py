"""`cpu`: each replica's utilization of its CPU allotment, as the tier's stats report it."""

from __future__ import annotations

from dataclasses import dataclass

from tierscale.config.settings import MetricSpec
from tierscale.metrics.base import Observation
from tierscale.policy.types import MetricInput


@dataclass(frozen=True)
class CpuSource:
    spec: MetricSpec

    async def read(self, obs: Observation) -> MetricInput:
        # The policy wants absolute usage in millicores (HPA's pod metrics); the tier reports percent of
        # the allotment, so scale back by it.
        per: dict[str, float | None] = {}
        for r in obs.replicas:
            st = obs.stats.get(r.id)
            if st is not None and st.cpu_percent is not None:
                per[r.id] = st.cpu_percent * st.cpu_allotment_milli / 100.0
        return MetricInput(
            "cpu", "resource", self.spec.target, per, sample_time=obs.now, sample_window=obs.window
        )
