"""The statement gate: classify → decide → forward, deny (or, later, hold) — per session, without sockets."""
