"""asyncio side of pgproxy: the listener, per-connection lifecycle, upstream dialing and the relay.

This is the only package that owns sockets. Protocol logic lives in ``pgproxy.wire`` and
``pgproxy.session``; this package moves bytes and awaits I/O.
"""
