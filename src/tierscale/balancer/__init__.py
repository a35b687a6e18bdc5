"""tierscale's own nginx layer-7 balancer: one master per group, plus its access-log statistics."""

from tierscale.balancer.accesslog import AccessLogReader, TotalStats, UpstreamStats
from tierscale.balancer.nginx import ALGORITHMS, ApplyResult, BalancerError, NginxBalancer, parse_address

__all__ = [
    "ALGORITHMS",
    "AccessLogReader",
    "ApplyResult",
    "BalancerError",
    "NginxBalancer",
    "TotalStats",
    "UpstreamStats",
    "parse_address",
]
