"""Human approvals of held statements: the request model, its store, and the channels approvers use.

``model`` (pure) holds the rules (who may vote, quorum of distinct people, expiry). The store keeps
requests in PostgreSQL so replicas share them; channels (Slack, the HTTP API and page, the CLI) cast
votes with identities they verified. Nothing here speaks the PostgreSQL wire protocol.
"""
