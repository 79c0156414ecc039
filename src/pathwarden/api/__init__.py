"""The HTTP API: OIDC token exchange for CI jobs, whoami, token administration.

:func:`~pathwarden.api.app.create_app` builds the FastAPI application over a
gateway; :class:`~pathwarden.api.server.ApiServer` serves it on the gateway's
own event loop (TLS, or plain HTTP from loopback when allowed). See docs/api.md.
"""

from pathwarden.api.app import MAX_BODY, create_app
from pathwarden.api.server import ApiServer

__all__ = ["MAX_BODY", "ApiServer", "create_app"]
