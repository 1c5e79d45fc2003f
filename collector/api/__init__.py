"""The HR and auditor HTTPS API (aiohttp): app factory, routes, views, rbac, middleware.

Public entry points: :func:`make_app`, :func:`start_api`, :func:`run_api`,
:class:`ApiThread`, :class:`ApiSection`/:func:`parse_api_section` (the ``[api]`` config).

Importing the package is light: the names are loaded on first use (PEP 562), so
``collector.api.config`` (the ``[api]`` section, no aiohttp) can be imported without the web
stack; ``from collector.api import make_app`` loads collector.api.app as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.api.app import ApiThread, make_app, run_api, start_api, tls_context
    from collector.api.config import ApiSection, parse_api_section
    from collector.api.keys import ApiSettings

__all__ = ["ApiSection", "ApiSettings", "ApiThread", "make_app", "parse_api_section",
           "run_api", "start_api", "tls_context"]

_HOME = {"ApiSection": "config", "parse_api_section": "config", "ApiSettings": "keys",
         "ApiThread": "app", "make_app": "app", "run_api": "app", "start_api": "app",
         "tls_context": "app"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"collector.api.{home}"), name)
