"""Static routes by MatchUri (Lync's ``New-CsStaticRoute`` vocabulary) and their lookup.

A leaf package: it never imports ``proxy``.
"""

from routes.table import RouteTable, StaticRoute, parse_routes

__all__ = ["RouteTable", "StaticRoute", "parse_routes"]
