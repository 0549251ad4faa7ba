"""Sans-IO SIP: grammar, URIs, headers, messages, stream framing and transactions.

Nothing in this package touches a socket, a clock or asyncio; time is passed in.
"""
