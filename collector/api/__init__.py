"""The HR and auditor HTTPS API (aiohttp): app factory, routes, views, rbac, middleware.

Public entry points: :func:`make_app`, :func:`start_api`, :func:`run_api`,
:class:`ApiThread`, :class:`ApiSection`/:func:`parse_api_section` (the ``[api]`` config).
"""

from __future__ import annotations

from collector.api.app import (
    ApiSection,
    ApiThread,
    make_app,
    parse_api_section,
    run_api,
    start_api,
    tls_context,
)
from collector.api.keys import ApiSettings

__all__ = ["ApiSection", "ApiSettings", "ApiThread", "make_app", "parse_api_section",
           "run_api", "start_api", "tls_context"]
