"""People sign in through OIDC: the authorization code flow with PKCE, server-side sessions.

This module holds the rules; the views are collector.api.views_signin (``GET /auth/login``,
``GET /auth/callback``, ``POST /auth/logout``, ``GET /auth/me``, ``GET /console/``: public in
the route table, each authenticates what it needs itself). The middleware
(collector.api.middlewares.authenticate) takes the session cookie as its third way in, through
:func:`session_principal`: a :class:`~collector.access.principals.Principal` of kind
``oidc``.

The steps of a sign-in (numbered as in docs/api.md "Sign-in"):
(1) login: a fresh state, nonce and PKCE S256 verifier, kept here (collector.api.sessions);
    ``next`` only a local path; redirect to the authorization endpoint of the discovery
    document;
(2) callback: the state is taken (single use: a replayed or forged callback finds none);
(3) the code is exchanged at the token endpoint with the verifier and the client secret
    (read from ``client_secret_file``, never the config);
(4) the ID token is validated by collector.access.oidc (signature by the provider's JWKS,
    issuer, audience, expiry) and its nonce must be this sign-in's;
(5) claims map to roles ([oidc] mapping); privileged roles without MFA are withheld (the
    console and every refusal say "MFA required"); a role set that breaks segregation of
    duties signs nobody in;
(6) a session (collector.api.sessions) with the cookie ``HttpOnly; Secure;
    SameSite=Strict; Path=/``; the answer is a page of ours that moves on to ``next`` (a
    navigation that starts at the provider would not carry a SameSite=Strict cookie).

Every request with the cookie: the session must be live (idle timeout, absolute lifetime);
at most every ``revalidate_s`` the provider confirms it with the refresh-token grant (a user
disabled there is refused, the session ends; roles can only shrink); a state-changing request
must come from our origin (``Origin`` equal to the redirect URI's origin) or carry the
session's CSRF token (``X-CSRF-Token`` header, or the ``csrf`` form field of sign-out).
Sign-in, refused sign-in, sign-out, expiry and refusal at re-validation are each an
``access`` entry of ``"type": "session"`` (never the session id: its ``ref``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import logging
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from collector import ConfigError
from collector.access.oidc import OidcAuth, OidcError, OidcGrant, OidcSection, OidcTokenError
from collector.access.principals import Principal
from collector.api.access_log import AccessRecord
from collector.api.errors import (
    ApiError,
    UnauthenticatedError,
    UnavailableError,
)
from collector.api.keys import ACCESS_LOG, CLOCK, CTX, READER, STORE
from collector.api.reads import on_reader
from collector.api.sessions import (
    Ended,
    LoginStates,
    Session,
    SessionSettings,
    SessionStore,
)
from collector.ledger import access_tables

log = logging.getLogger("timeclock.api.signin")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
HTTP_TIMEOUT_S = 10.0
SWEEP_MAX_S = 30.0



class MfaRequiredError(ApiError):
    """A privileged role the claims map to was withheld: this sign-in had no MFA."""

    status, slug, title = 403, "mfa-required", "MFA required"


class CsrfError(ApiError):
    """A state-changing request with the session cookie came from another origin."""

    status, slug, title = 403, "csrf", "Cross-site request refused"


class SigninRefusedError(ApiError):
    """The callback cannot sign anyone in (state, code, ID token, roles); nothing started."""

    status, slug, title = 400, "sign-in-refused", "Sign-in refused"


class ProviderError(Exception):
    """The provider could not be reached or answered nonsense (not a refusal)."""


@dataclass(frozen=True)
class SigninConfig:
    """The sign-in keys of ``[oidc]`` (docs/operations.md "Sign-in and sessions")."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str                      # https://<the API's public origin>/auth/callback
    sessions: SessionSettings = field(default_factory=SessionSettings)
    scope: str = "openid offline_access profile email groups employee"

    @property
    def origin(self) -> str:
        u = urllib.parse.urlsplit(self.redirect_uri)
        return f"{u.scheme}://{u.netloc}"

    @classmethod
    def load(cls, section: OidcSection) -> SigninConfig | None:
        """From ``[oidc]``: None when sign-in is not configured; the client secret is read
        from ``client_secret_file`` (ConfigError naming the key when it cannot be)."""
        if section.client_id is None or section.client_secret_file is None \
                or section.redirect_uri is None:
            return None
        path = section.client_secret_file
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"oidc.client_secret_file: cannot read {path}: "
                               f"{getattr(e, 'strerror', None) or e}"]) from e
        if not secret or "\n" in secret:
            raise ConfigError([f"oidc.client_secret_file: {path} must hold the client secret "
                               f"on one line"])
        return cls(client_id=section.client_id, client_secret=secret,
                   redirect_uri=section.redirect_uri,
                   sessions=SessionSettings(idle_s=section.session_idle_s,
                                            max_s=section.session_max_s,
                                            revalidate_s=section.revalidate_s))


class SignIn:
    """The sign-in state of one API process: pending logins, sessions, the provider link
    (collector.access.oidc's OidcAuth: discovery, JWKS, ID tokens, the claims → roles
    mapping and the MFA rule)."""

    def __init__(self, config: SigninConfig, oidc: OidcAuth) -> None:
        self.config, self.oidc = config, oidc
        self.states = LoginStates()
        self.sessions = SessionStore(config.sessions)
        self._locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def settings(self) -> SessionSettings:
        return self.sessions.settings

    async def endpoints(self) -> tuple[str, str]:
        """(authorization endpoint, token endpoint) of the discovery document."""
        try:
            doc = await asyncio.to_thread(self.oidc.verifier.discovery)
        except OidcError as e:
            raise ProviderError(str(e)) from e
        ends = doc.get("authorization_endpoint"), doc.get("token_endpoint")
        if not all(isinstance(x, str) and x.startswith(("https://", "http://")) for x in ends):
            raise ProviderError("the discovery document lacks authorization_endpoint or "
                                "token_endpoint")
        return str(ends[0]), str(ends[1])

    async def grant(self, id_token: str, *, nonce: str | None) -> OidcGrant:
        """The validated ID token's grant: (4) signature by the provider's JWKS, issuer,
        audience = our client id, times, nonce; (5) claims → roles, MFA rule. OidcTokenError
        when refused, ProviderError when the provider's keys cannot be read."""
        o = self.oidc
        try:
            ident = await asyncio.to_thread(o.verifier.verify_id_token, id_token,
                                            client_id=self.config.client_id, nonce=nonce,
                                            now_s=o.wall())
        except OidcError as e:
            raise ProviderError(str(e)) from e
        return o.section.grant(ident)

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def token_request(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """POST the token endpoint as our client (client_secret_basic, RFC 6749 §2.3.1:
        both parts form-urlencoded): (status, JSON object). ProviderError when it cannot
        be asked or answers something other than a JSON object."""
        _, token_endpoint = await self.endpoints()
        basic = base64.b64encode(
            (urllib.parse.quote(self.config.client_id, safe="") + ":"
             + urllib.parse.quote(self.config.client_secret, safe="")).encode()).decode()
        try:
            async with self.http().post(token_endpoint, data=dict(form),
                                        headers={"Authorization": f"Basic {basic}",
                                                 "Accept": "application/json"}) as r:
                status = r.status
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise ProviderError(f"token endpoint: {type(e).__name__}: {e}") from e
        if not isinstance(body, dict):
            raise ProviderError(f"token endpoint answered {status} without a JSON object")
        return status, body

    def lock(self, ref: str) -> asyncio.Lock:
        lk = self._locks.get(ref)
        if lk is None:
            lk = self._locks[ref] = asyncio.Lock()
        return lk

    def forget(self, ref: str) -> None:
        self._locks.pop(ref, None)


async def principal_on_ledger(app: web.Application, signin: SignIn, grant: OidcGrant,
                               now: int) -> None:
    """The ledger says what ``grant`` gives (collector.access.oidc: an ``oidc-roles`` entry
    when it changed); OidcTokenError when the name is another subject's or disabled."""
    store = signin.oidc.principals(app[STORE], app[READER])
    if await on_reader(app, store.current, grant) is None:
        await asyncio.to_thread(store.record, grant, now_us=now)


SIGNIN = web.AppKey("signin", SignIn)
SESSION = web.RequestKey("session", Session)


# ---- access entries -------------------------------------------------------------------------

def record_event(request: web.Request, event: str, *, session: Session | None = None,
           principal: str | None = None, reason: str | None = None,
           at: int | None = None, **extra: Any) -> None:
    """One ``access`` entry of ``"type": "session"`` (see module doc)."""
    rec: AccessRecord = request[CTX].record
    body: dict[str, Any] = {
        "type": "session", "event": event, "at": at if at is not None else request.app[CLOCK](),
        "principal": (session.principal if session is not None else principal) or "anonymous",
        "auth": "oidc", "client": rec.client[:64], "request_id": rec.request_id}
    if session is not None:
        body.update(session=session.ref, subject=session.subject, roles=sorted(session.roles),
                    withheld=sorted(session.withheld), mfa=session.mfa)
    if reason is not None:
        body["reason"] = reason[:300]
    body.update({k: v for k, v in extra.items() if v is not None})
    request.app[ACCESS_LOG].add(body)


def _ended_body(ended: Ended, now: int) -> dict[str, Any]:
    s = ended.session
    return {"type": "session", "event": "expired" if ended.reason in ("idle", "absolute")
            else "ended", "at": now, "principal": s.principal, "auth": "oidc",
            "session": s.ref, "subject": s.subject, "roles": sorted(s.roles),
            "withheld": sorted(s.withheld), "mfa": s.mfa, "reason": ended.reason,
            "created_at": s.created_at, "last_seen_at": s.last_seen_at}


def record_ended(app: web.Application, ended: list[Ended]) -> None:
    now = app[CLOCK]()
    for e in ended:
        app[ACCESS_LOG].add(_ended_body(e, now))
        app[SIGNIN].forget(e.session.ref)


# ---- the session as a way in ----------------------------------------------------------------

def principal_of(session: Session) -> Principal:
    return Principal(name=session.principal, kind="oidc", roles=session.roles,
                     created_at=session.created_at, last_used_at=session.last_seen_at,
                     disabled_at=None, employee_id=session.employee_id, sites=session.sites)


def check_origin(request: web.Request, session: Session, form_token: str | None = None
                 ) -> None:
    """CSRF defence of a state-changing request that a session cookie authenticates: its
    ``Origin`` is ours, or (no Origin) it carries the session's CSRF token."""
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    expected = request.app[SIGNIN].config.origin
    if origin is not None:
        if origin != expected:
            raise CsrfError(f"Origin {origin[:100]!r} is not this API's ({expected}); a "
                            f"state-changing request with the session cookie must come from "
                            f"its own pages")
        return
    token = request.headers.get(CSRF_HEADER) or form_token or ""
    if not hmac.compare_digest(token.encode("utf-8", "replace"), session.csrf.encode()):
        raise CsrfError(f"a state-changing request with the session cookie needs Origin: "
                        f"{expected} or the session's {CSRF_HEADER}")


async def session_principal(request: web.Request, rec: AccessRecord, cookie: str) -> Principal:
    """The middleware's third way in (see module doc); UnauthenticatedError when the cookie
    names no live session, or the provider refuses it at re-validation."""
    app = request.app
    signin = app.get(SIGNIN)
    rec.auth = "session"
    if signin is None:
        raise UnauthenticatedError("sign-in is not configured on this collector ([oidc])")
    session = await live_session(request, signin, cookie)
    rec.extra["session"] = session.ref
    check_origin(request, session)
    request[SESSION] = session
    return principal_of(session)


async def live_session(request: web.Request, signin: SignIn, cookie: str) -> Session:
    now = request.app[CLOCK]()
    session, ended = signin.sessions.get(cookie, now)
    if ended is not None:
        record_ended(request.app, [ended])
        what = "idle timeout" if ended.reason == "idle" else "absolute lifetime"
        raise UnauthenticatedError(f"the session ended ({what}); sign in again at /auth/login")
    if session is None:
        raise UnauthenticatedError("no such session (signed out, ended, or the collector "
                                   "restarted); sign in again at /auth/login")
    if session.revalidation_due(signin.settings, now):
        session = await _revalidate(request, signin, cookie, session)
    touched = signin.sessions.touch(cookie, request.app[CLOCK]())
    return touched or session


async def _revalidate(request: web.Request, signin: SignIn, cookie: str, session: Session
                      ) -> Session:
    """Ask the provider (refresh-token grant) whether the person still may be signed in;
    one request per session at a time (a refresh token may rotate: two at once could
    revoke the grant)."""
    async with signin.lock(session.ref):
        current, _ = signin.sessions.get(cookie, request.app[CLOCK]())
        if current is None:
            raise UnauthenticatedError("the session ended; sign in again at /auth/login")
        if not current.revalidation_due(signin.settings, request.app[CLOCK]()):
            return current           # another request re-validated it meanwhile
        why = await _refresh_refusal(request.app, signin, cookie, current,
                                     request.app[CLOCK]())
        if isinstance(why, Session):
            return why
        signin.sessions.end(cookie)
        signin.forget(current.ref)
        record_event(request, "revalidation-refused", session=current, reason=why)
        raise UnauthenticatedError(f"the identity provider no longer confirms this session "
                                   f"({why}); sign in again at /auth/login")


async def _refresh_refusal(app: web.Application, signin: SignIn, cookie: str, s: Session,
                           now: int) -> Session | str:
    """The session re-validated at the provider (roles narrowed to the refreshed ID
    token's), or why the provider refused it. Provider unreachable: UnavailableError (the
    request is refused, the session kept for the next attempt: fail closed, not out)."""
    if s.refresh_token is None:
        return "the provider issued no refresh token to re-validate with"
    try:
        status, body = await signin.token_request(
            {"grant_type": "refresh_token", "refresh_token": s.refresh_token})
    except ProviderError as e:
        raise UnavailableError(f"cannot re-validate the session at the identity provider "
                               f"({e}); try again") from e
    if status >= 500:
        raise UnavailableError(f"the identity provider answered {status} to the session's "
                               f"re-validation; try again")
    if status != 200:
        return f"{str(body.get('error', status))[:60]}: " \
               f"{str(body.get('error_description', ''))[:160]}"
    roles = await _confirmed_roles(app, signin, s, body.get("id_token"), now)
    if isinstance(roles, str):
        return roles
    rt = body.get("refresh_token")
    # The session's roles can only shrink here (collector.api.sessions.revalidated).
    s2 = signin.sessions.revalidated(cookie, now, roles=roles,
                                     refresh_token=rt if isinstance(rt, str) else None)
    return s2 if s2 is not None else "the session ended meanwhile"


async def _confirmed_roles(app: web.Application, signin: SignIn, s: Session, id_token: Any,
                           now: int) -> frozenset[str] | str:
    """What the refreshed ID token (when the provider sent one) still gives of the session's
    roles, or why it gives nothing: refused, another subject, a principal disabled here."""
    if not isinstance(id_token, str):
        return await _unless_disabled(app, s)
    try:
        grant = await signin.grant(id_token, nonce=None)
    except ProviderError as e:
        raise UnavailableError(f"cannot re-validate the session: {e}") from e
    except OidcTokenError as e:
        return f"the refreshed ID token is refused: {e}"
    if grant.subject != s.subject:
        return "the refreshed ID token names another subject"
    mapped = grant.roles | grant.withheld
    if not mapped & (s.roles | s.withheld):
        return "the claims map to none of the session's roles any more"
    roles = s.roles & mapped                # never more than the sign-in granted
    narrowed = dataclasses.replace(grant, roles=roles, withheld=s.withheld & mapped, mfa=s.mfa)
    try:                                    # a principal disabled here ends it too
        await principal_on_ledger(app, signin, narrowed, now)
    except OidcTokenError as e:
        return str(e)
    return roles


async def _unless_disabled(app: web.Application, s: Session) -> frozenset[str] | str:
    """The session's roles, unless its principal was disabled here (``token disable``)."""
    row = await on_reader(app, access_tables.principal, app[READER], s.principal)
    if row is not None and row.disabled_at is not None:
        return f"principal {s.principal} is disabled"
    return s.roles


def check_mfa(request: web.Request, roles: tuple[str, ...] | None) -> None:
    """Before rbac: a session that holds none of ``roles`` but was denied one of them for
    want of MFA is told so (MfaRequiredError), rather than just 'forbidden'."""
    session = request.get(SESSION)
    if session is None or roles is None or session.roles & set(roles):
        return
    missing = sorted(session.withheld & set(roles))
    if missing:
        raise MfaRequiredError(f"MFA required: {request.method} {request.path} needs "
                               f"{', '.join(missing)}, a privileged role that is granted only "
                               f"to a sign-in with multi-factor authentication; sign out and "
                               f"sign in again with MFA")


# ---- wiring ---------------------------------------------------------------------------------

def install(app: web.Application, signin: SignIn) -> None:
    """Put ``signin`` into ``app``: the sessions' expiry sweep runs while it serves."""
    app[SIGNIN] = signin
    app.cleanup_ctx.append(_sweeper)


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    signin = app[SIGNIN]

    async def run() -> None:
        while True:
            st = signin.settings        # read each time: a tenth of the shorter bound
            await asyncio.sleep(max(0.5, min(SWEEP_MAX_S, min(st.idle_s, st.max_s) / 10)))
            try:
                record_ended(app, signin.sessions.sweep(app[CLOCK]()))
            except Exception:
                log.exception("session sweep failed")

    task = asyncio.create_task(run(), name="timeclock-session-sweep")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await signin.close()


