"""Metric sources: one small class per metric `type`, found through the registry."""

from tierscale.metrics.base import MetricSource, Observation, Traffic
from tierscale.metrics.registry import SOURCES, SourceDeps, make_sources

__all__ = ["SOURCES", "MetricSource", "Observation", "SourceDeps", "Traffic", "make_sources"]
