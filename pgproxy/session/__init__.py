"""Sans-IO state machines for the two sides of a proxied session.

``client`` drives a connecting client through the startup phase; ``upstream`` logs pgproxy in to
PostgreSQL; ``params`` decides which client startup parameters may reach the server. Nothing here
touches sockets or event loops: callers feed bytes or messages in and send what comes out.
"""
