"""pgproxy's web pages for people: the audit review page (search, details, exports) and its HTTP server.

Modules: ``app`` (``build_web_app``: the FastAPI app and its routes), ``auth`` (reviewers: OIDC tokens in
a bearer header or a login cookie, checked on every request), ``views`` (Jinja2 templates, escaping and
security headers), ``server`` (``WebServer``: uvicorn inside pgproxy's own event loop).

The pages read the audit log through ``pgproxy.audit.review`` and never write it; the proxy's
composition root (``pgproxy.app``) builds the reader and the token verifier and hands them in.
"""
