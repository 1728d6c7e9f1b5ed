"""pgproxy's web pages for people: audit review (search, details, exports), approvals, and their HTTP server.

Modules: ``app`` (``build_web_app``: the FastAPI app and its routes), ``auth`` (OIDC tokens in a bearer
header or a login cookie, checked on every request), ``oidc_login`` (sign-in through the identity
provider: authorization code with PKCE), ``demo_login`` (the demo issuer's sign-in), ``approvals``
(the approval pages and API), ``slack_endpoint`` (Slack's interactivity requests), ``views`` (Jinja2
templates, escaping and security headers), ``server`` (``WebServer``: uvicorn inside pgproxy's loop).

The pages read the audit log through ``pgproxy.audit.review`` and never write it; votes go to the
approval service. The proxy's composition root (``pgproxy.app``) builds the reader, the service and
the token verifier and hands them in.
"""
