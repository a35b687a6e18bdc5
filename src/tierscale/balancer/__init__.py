"""Balancers: the `Balancer` interface, tierscale's own nginx per group, its access-log statistics."""

from tierscale.balancer.accesslog import AccessLogReader, TotalStats, UpstreamStats
from tierscale.balancer.base import ApplyResult, Balancer, BalancerError
from tierscale.balancer.nginx import ALGORITHMS, NginxBalancer, parse_address

__all__ = [
    "ALGORITHMS",
    "AccessLogReader",
    "ApplyResult",
    "Balancer",
    "BalancerError",
    "NginxBalancer",
    "TotalStats",
    "UpstreamStats",
    "parse_address",
]
