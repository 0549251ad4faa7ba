"""The asyncio and ssl edge: the only code that touches sockets, TLS or the clock."""
