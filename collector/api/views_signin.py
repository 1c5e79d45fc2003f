"""The sign-in views (collector.api.signin has the rules): ``GET /auth/login``, ``GET
/auth/callback``, ``POST /auth/logout``, ``GET /auth/me`` and the server-rendered
``GET /console/`` (jinja2 templates in collector/api/templates/, autoescaped, undefined
names an error).

Steps (1)–(6) are collector.api.signin's module doc. Pages carry ``Cache-Control: no-store``,
a Content-Security-Policy that allows no script and posts only to this origin, and
``Referrer-Policy: same-origin`` (nothing leaks to the provider; our own POSTs keep their
``Origin``, which ``no-referrer`` would make ``null``).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jinja2
from aiohttp import web

from collector.access.oidc import OidcGrant, OidcTokenError
from collector.access.principals import ROLES
from collector.api.errors import (
    BadRequestError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from collector.api.keys import CLOCK, CTX
from collector.api.sessions import COOKIE, Ended, LoginState, Session
from collector.api.signin import (
    SESSION,
    SIGNIN,
    ProviderError,
    SignIn,
    SigninRefusedError,
    check_origin,
    live_session,
    principal_of,
    principal_on_ledger,
    record_ended,
    record_event,
)
from wire.grants import sod_violation

NEXT_MAX = 500
DEFAULT_NEXT = "/console/"
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("collector.api", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined)


def _signin(request: web.Request) -> SignIn:
    signin = request.app.get(SIGNIN)
    if signin is None:
        raise NotFoundError("sign-in is not configured on this collector (no [oidc] "
                            "client_secret_file and redirect_uri)")
    return signin


def local_next(value: str | None) -> str:
    """``?next=``: only a path of this API (``/…``, not ``//host`` nor ``/\\host``, no
    control characters), else BadRequestError; absent: the console."""
    if value is None or value == "":
        return DEFAULT_NEXT
    bad = (len(value) > NEXT_MAX or not value.startswith("/") or value.startswith(("//", "/\\"))
           or any(ord(c) < 0x20 or c in "\\\x7f" for c in value))
    parts = urllib.parse.urlsplit(value)
    if bad or parts.scheme or parts.netloc:
        raise BadRequestError(f"next must be a local path such as {DEFAULT_NEXT} (at most "
                              f"{NEXT_MAX} characters), not {value[:80]!r}")
    return value


def _page(template: str, status: int = 200, **values: Any) -> web.Response:
    html = _TEMPLATES.get_template(template).render(**values)
    return web.Response(status=status, text=html, content_type="text/html",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "form-action 'self'; frame-ancestors 'none'",
                                 # no referrer leaves for the provider; our own POSTs keep
                                 # their Origin (no-referrer would make it "null")
                                 "Referrer-Policy": "same-origin",
                                 "X-Content-Type-Options": "nosniff"})


async def login(request: web.Request) -> web.StreamResponse:
    # (1) state, nonce and verifier stay here; the provider sees the S256 challenge only.
    signin = _signin(request)
    next_path = local_next(request.query.get("next"))
    try:
        authorize_url, _ = await signin.endpoints()
    except ProviderError as e:
        raise UnavailableError(f"the identity provider cannot be reached ({e})") from e
    ls = signin.states.start(next_path, request.app[CLOCK]())
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": signin.config.client_id,
        "redirect_uri": signin.config.redirect_uri, "scope": signin.config.scope,
        "state": ls.state, "nonce": ls.nonce, "code_challenge": ls.challenge,
        "code_challenge_method": "S256"})
    sep = "&" if "?" in authorize_url else "?"
    return web.Response(status=302, headers={"Location": f"{authorize_url}{sep}{query}",
                                             "Cache-Control": "no-store"})


async def callback(request: web.Request) -> web.StreamResponse:
    signin = _signin(request)
    rec = request[CTX].record           # the code and state are credentials: never recorded
    rec.query = {k: "***" if k in ("code", "state") else v for k, v in rec.query.items()}
    # (2) the state is single-use: a replayed, forged or expired callback finds nothing.
    # Refusals before an identity is known are tallied with the other requests without a
    # principal (per source and minute): a flood of forged callbacks never grows the ledger.
    ls = signin.states.take(request.query.get("state", ""), request.app[CLOCK]())
    if ls is None:
        raise SigninRefusedError("unknown, already used or expired sign-in state (a replayed "
                                 "or forged callback); start again at /auth/login")
    body, grant = await _redeem(request, signin, ls)
    why = await _refusal(request.app, signin, grant)
    if why is not None:
        record_event(request, "sign-in-refused", principal=grant.name, reason=why,
                     subject=grant.subject)
        raise SigninRefusedError(f"{grant.name} cannot sign in: {why}")
    return _start_session(request, signin, grant, body, ls.next_path)


def _said(body: Mapping[str, Any], fallback: object) -> str:
    return (f"{str(body.get('error', fallback))[:60]}: "
            f"{str(body.get('error_description', ''))[:200]}")


async def _redeem(request: web.Request, signin: SignIn, ls: LoginState
                  ) -> tuple[dict[str, Any], OidcGrant]:
    """(3) the code, with this sign-in's verifier and our client secret; (4) + (5) the ID
    token with this sign-in's nonce, the roles and the MFA rule."""
    q = request.query
    if "error" in q:
        raise SigninRefusedError(f"the identity provider refused the sign-in ({_said(q, '')})")
    code = q.get("code")
    if not code:
        raise SigninRefusedError("the callback carries no authorization code")
    try:
        status, body = await signin.token_request({
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": signin.config.redirect_uri, "code_verifier": ls.verifier})
        id_token = body.get("id_token")
        if status != 200 or not isinstance(id_token, str):
            raise SigninRefusedError(f"the identity provider refused the code "
                                     f"({_said(body, status)})")
        return body, await signin.grant(id_token, nonce=ls.nonce)
    except ProviderError as e:
        raise UnavailableError(f"the identity provider cannot be used now ({e})") from e
    except OidcTokenError as e:
        # A code our client secret redeemed: someone signed in at the provider, so this is
        # attributable enough for an entry of its own (and bounded by their sign-ins).
        record_event(request, "sign-in-refused", reason=f"ID token: {e}")
        raise SigninRefusedError(f"the ID token is refused: {e}") from e


async def _refusal(app: web.Application, signin: SignIn, grant: OidcGrant) -> str | None:
    """Why the person the provider vouched for may not sign in here, or None (then the
    ledger says what the grant gives: an ``oidc-roles`` entry when it changed)."""
    if not grant.roles and not grant.withheld:
        return "the claims map to no role on this collector ([oidc] roles)"
    sod = sod_violation(grant.roles)
    if sod is not None:
        return f"the roles the claims map to break segregation of duties: {sod}"
    try:
        await principal_on_ledger(app, signin, grant, app[CLOCK]())
    except OidcTokenError as e:
        return str(e)
    return None


def _start_session(request: web.Request, signin: SignIn, grant: OidcGrant,
                   body: Mapping[str, Any], next_path: str) -> web.Response:
    """(6) the session; the cookie is the only thing the browser holds."""
    app = request.app
    rt = body.get("refresh_token")
    sid, session, ended = signin.sessions.create(
        principal=grant.name, subject=grant.subject, roles=grant.roles,
        withheld=grant.withheld, employee_id=grant.employee, sites=grant.sites,
        mfa=grant.mfa, refresh_token=rt if isinstance(rt, str) else None,
        now_us=app[CLOCK]())
    old = request.cookies.get(COOKIE)
    if old is not None and (replaced := signin.sessions.end(old)) is not None:
        ended.append(Ended(replaced, "replaced"))     # this browser's previous session
    record_ended(app, ended)
    record_event(request, "sign-in", session=session)
    _attribute(request, session)
    resp = _page("signed_in.html", principal=session.principal, next_path=next_path)
    resp.set_cookie(COOKIE, sid, path="/", secure=True, httponly=True, samesite="Strict")
    return resp


def _attribute(request: web.Request, session: Session) -> None:
    """The request is the session's principal's (an access entry of its own)."""
    c = request[CTX]
    c.principal = principal_of(session)
    c.record.principal, c.record.auth = session.principal, "session"
    c.record.extra["session"] = session.ref


async def _from_cookie(request: web.Request) -> Session | None:
    """The live session of the request's cookie (recorded as its principal), or None."""
    signin = _signin(request)               # NotFoundError when sign-in is not configured
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return None
    rec = request[CTX].record
    rec.auth = "session"
    session = await live_session(request, signin, cookie)
    _attribute(request, session)
    request[SESSION] = session
    return session


def _expiry_iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat(timespec="seconds")


async def me(request: web.Request) -> web.StreamResponse:
    session = await _from_cookie(request)
    if session is None:
        raise UnauthenticatedError("not signed in: no session cookie (sign in at /auth/login)",
                                   presented=False)
    st = _signin(request).settings
    return web.json_response({
        "principal": session.principal, "kind": "oidc", "subject": session.subject,
        "roles": sorted(session.roles), "mfa_required_for": sorted(session.withheld),
        "mfa": session.mfa, "employee_id": session.employee_id,
        "sites": None if session.sites is None else sorted(session.sites),
        "session": {"ref": session.ref, "created_at": session.created_at,
                    "revalidated_at": session.revalidated_at,
                    "idle_expires_at": session.idle_end(st),
                    "absolute_expires_at": session.absolute_end(st),
                    "expires_at": session.expires_at(st),
                    "idle_s": st.idle_s, "max_s": st.max_s, "revalidate_s": st.revalidate_s}},
        headers={"Cache-Control": "no-store"})


async def console(request: web.Request) -> web.StreamResponse:
    try:
        session = await _from_cookie(request)
    except UnauthenticatedError:
        session = None
    if session is None:
        nxt = urllib.parse.quote(request.path[:NEXT_MAX], safe="/")
        return web.Response(status=302, headers={"Location": f"/auth/login?next={nxt}",
                                                 "Cache-Control": "no-store"})
    st = _signin(request).settings
    return _page("console.html", session=session,
                 roles=[(r, ROLES.get(r, "")) for r in sorted(session.roles)],
                 withheld=sorted(session.withheld), idle_s=st.idle_s, max_s=st.max_s,
                 expires=_expiry_iso(session.expires_at(st)))


async def logout(request: web.Request) -> web.StreamResponse:
    signin = _signin(request)
    cookie = request.cookies.get(COOKIE)
    session = None
    if cookie is not None:
        session, ended = signin.sessions.get(cookie, request.app[CLOCK]())
        if ended is not None:
            record_ended(request.app, [ended])
    if session is not None:
        form = await request.post() if request.content_type in (
            "application/x-www-form-urlencoded", "multipart/form-data") else {}
        token = form.get("csrf")
        check_origin(request, session, token if isinstance(token, str) else None)
        _attribute(request, session)
        signin.sessions.end(cookie or "")
        signin.forget(session.ref)
        record_event(request, "sign-out", session=session)
    resp = _page("message.html", title="Signed out",
                 message="You are signed out of timeclock." if session is not None else
                 "No session was signed in.")
    resp.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return resp
