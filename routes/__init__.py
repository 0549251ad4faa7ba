"""Routes: static routes by MatchUri (Lync's ``New-CsStaticRoute`` vocabulary), weighted destinations
(RFC 2782) and RFC 3263 DNS resolution, with a health table for failover.

A leaf package: it never imports ``proxy``. ``table``, ``config``, ``candidates`` and ``dns`` are
sans-IO (time, randomness and DNS answers are passed in); ``resolver`` is the asyncio edge.
"""

from routes.candidates import Candidate, Health, order, rfc2782_order
from routes.config import parse_routes
from routes.table import RouteTable, StaticRoute

__all__ = ["Candidate", "Health", "RouteTable", "StaticRoute", "order", "parse_routes", "rfc2782_order"]
