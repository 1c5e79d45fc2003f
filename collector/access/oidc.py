"""JWT access tokens of an OpenID Connect provider: validation, roles, and the ledger trace.

Role: the collector trusts one provider (``[oidc]``, :class:`OidcSection`). A Bearer value
that is a JWT is validated here (:meth:`OidcVerifier.verify`) against the keys the provider
publishes (discovery → ``jwks_uri``), and its claims are mapped to roles from config
(:meth:`OidcSection.grant`): machine clients (client credentials; ``sub`` is the client id)
by ``client_roles``, people by their groups (``roles``), with the person (``employee_claim``)
and sites (``group_sites``) they are limited to.

Invariants:
- Parse strictly, then verify: the header's ``alg`` is one the provider's keys use (never
  ``none`` nor an HMAC, whatever the JWKS says), ``typ`` is ``at+jwt`` (RFC 9068: an ID
  token is not an access token), the ``kid`` is in the JWKS, then the signature (PyJWT),
  then ``iss``, ``aud``, ``exp``/``nbf``/``iat`` against ``now`` with ``leeway_s``. Every
  refusal is an :class:`OidcTokenError` whose message says which step failed.
- Keys are cached: a request costs no network round trip. The JWKS is fetched again when
  older than ``jwks_cache_s``, or for an unknown ``kid`` at most once per
  ``jwks_refresh_min_s`` (a stream of made-up kids cannot make us hammer the provider). An
  access token verified once is remembered (at most ``jwks_cache_s``, 1,024 tokens): a
  client's later requests with it re-check only its lifetime.
- Privileged roles (``mfa_roles``) are granted only to a token whose ``acr`` is one of
  ``mfa_acr`` or whose ``amr`` holds one of ``mfa_amr``; otherwise they are withheld and a
  request that needs one is refused with :class:`MfaRequiredError` (403) saying so.
- Who could do what is on the ledger: the first time a principal is seen with a role set and
  scope, and whenever they change, :meth:`OidcPrincipals.record` appends an ``access`` entry
  ``oidc-roles`` (docs/protocol.md §7.2) in the same transaction as its rows in the access
  tables (kind ``oidc``), which wire.grants replays like any other role change.
- Names (docs/operations.md "Signing in with your company identity"): a machine client is
  named by its client id, a person by ``username_claim``, when that matches
  collector.access.principals.PRINCIPAL_RE; otherwise ``oidc-`` + 16 hex of
  SHA-256(iss, sub). The name is bound to its subject when first recorded: another subject
  (or a token/cert principal) already holding the name is refused, never merged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt

from collector import CollectorError, ForbiddenError
from collector.access.principals import (
    PRINCIPAL_RE,
    RESERVED,
    ROLES,
    Principal,
    access_change,
    check_roles,
)
from collector.ledger import access_tables
from collector.ledger.sqlbase import SQLStore
from wire.config import Section

ACTION = "oidc-roles"
KIND = "oidc"
SUBJECT_PREFIX = "oidc-subject:"      # tc_principals.created_by of an OIDC principal
AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# What a JWKS key may be used with: asymmetric signatures only.
KTY_ALGS: Mapping[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}
DEFAULT_ALG = {"RSA": "RS256", "OKP": "EdDSA"}
EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
MAX_DOCUMENT_BYTES = 1 << 20
MAX_TOKEN_BYTES = 16 * 1024
MAX_GROUPS = 200
VERIFIED_MAX = 1024          # verified access tokens remembered (see OidcVerifier.verify)
ROLE_RE = re.compile(r"^[a-z][a-z.]*[a-z]$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class OidcError(CollectorError):
    """The provider cannot be used (discovery or JWKS unreachable or malformed)."""


class OidcTokenError(CollectorError):
    """A JWT was refused; the message names the step that failed (401)."""


class MfaRequiredError(ForbiddenError):
    """A privileged role needs a multi-factor sign-in this token does not show (403)."""


# -- config ------------------------------------------------------------------------------

@dataclass(frozen=True)
class OidcSection:
    """``[oidc]``: the one trusted provider and how its claims map to roles (see
    docs/operations.md "Signing in with your company identity (OIDC)")."""

    issuer: str
    audience: str
    jwks_cache_s: int = 300
    jwks_refresh_min_s: int = 30
    leeway_s: int = 30
    http_timeout_s: int = 5
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    employee_claim: str | None = None
    require_at_jwt: bool = True
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)         # group → roles
    client_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)  # client → roles
    group_sites: Mapping[str, frozenset[str]] = field(default_factory=dict)   # group → sites
    mfa_roles: frozenset[str] = frozenset({"admin", "hr.approve", "hr.correct", "hr.people"})
    mfa_acr: frozenset[str] = frozenset()
    mfa_amr: frozenset[str] = frozenset({"mfa", "otp", "hwk", "swk"})
    # People's sign-in (collector.api.signin; docs/operations.md "Sign-in and sessions"):
    # on when client_id, client_secret_file and redirect_uri are all set.
    client_id: str | None = None
    client_secret_file: Path | None = None      # the secret itself is never in the config
    redirect_uri: str | None = None             # https://<API origin>/auth/callback
    session_idle_s: int = 15 * 60
    session_max_s: int = 8 * 3600
    revalidate_s: int = 60

    def grant(self, ident: OidcIdentity) -> OidcGrant:
        """The principal, roles and scope ``ident`` gets (roles not yet SoD-checked)."""
        machine = ident.client_id is not None and ident.subject == ident.client_id
        if machine:
            assert ident.client_id is not None  # noqa: S101 - machine implies it
            roles = self.client_roles.get(ident.client_id, frozenset())
            preferred: str | None = ident.client_id
        else:
            roles = frozenset().union(*(self.roles.get(g, frozenset()) for g in ident.groups))
            preferred = ident.username
        sites_of = [self.group_sites[g] for g in ident.groups if g in self.group_sites]
        sites = frozenset().union(*sites_of) if sites_of and not machine else None
        mfa = bool(ident.acr is not None and ident.acr in self.mfa_acr) or bool(
            self.mfa_amr & ident.amr)
        withheld = frozenset() if mfa else roles & self.mfa_roles
        return OidcGrant(name=principal_name(preferred, ident.issuer, ident.subject),
                         subject=subject_hash(ident.issuer, ident.subject),
                         roles=roles - withheld, withheld=withheld,
                         employee=None if machine else ident.employee, sites=sites,
                         machine=machine, mfa=mfa, identity=ident)


def _issuer_problem(issuer: str) -> str | None:
    u = urllib.parse.urlsplit(issuer)
    if u.scheme == "https" and u.hostname:
        return None
    if u.scheme == "http" and u.hostname in LOOPBACK_HOSTS:
        return None          # a provider on the same host (the tests'); never over a network
    return f"{issuer[:80]!r} must be an https:// URL (http only on loopback)"


def _role_map(sec: Section, key: str, what: str) -> dict[str, frozenset[str]]:
    sub = sec.section(key)
    out: dict[str, frozenset[str]] = {}
    for name in list(sub.table):
        roles = sub.string_list(str(name), pattern=ROLE_RE)
        if roles is None:
            continue
        unknown = sorted(set(roles) - ROLES.keys())
        if unknown:
            sub.problem(str(name), f"unknown role(s) {', '.join(unknown)}; roles are "
                                   f"{', '.join(ROLES)}")
            continue
        try:
            out[str(name)] = check_roles(roles)
        except CollectorError as e:
            sub.problem(str(name), f"{what} {name!r}: {e}")
    sub.finish()
    return out


def read_oidc_section(table: object, problems: list[str], *, prefix: str = "oidc"
                      ) -> OidcSection | None:
    """Read ``[oidc]`` with wire.config.Section, adding every problem (with its key path) to
    ``problems``; None when there is any."""
    sec = Section(prefix, table, problems)
    before = len(problems)
    d = OidcSection(issuer="-", audience="-")
    issuer = sec.string("issuer", required=True, hint="the provider's issuer URL")
    if issuer is not None and (why := _issuer_problem(issuer)) is not None:
        sec.problem("issuer", why)
    audience = sec.string("audience", required=True,
                          hint="the resource indicator the provider puts in aud")
    numbers = {k: sec.integer(k, getattr(d, k), lo=lo, hi=hi) for k, (lo, hi) in {
        "jwks_cache_s": (10, 86_400), "jwks_refresh_min_s": (1, 3600),
        "leeway_s": (0, 300), "http_timeout_s": (1, 60)}.items()}
    claims = {k: sec.string(k, getattr(d, k), pattern=re.compile(r"^[A-Za-z0-9_:./-]{1,64}$"))
              for k in ("username_claim", "groups_claim")}
    employee_claim = sec.string("employee_claim", pattern=re.compile(r"^[A-Za-z0-9_:./-]{1,64}$"))
    require_at_jwt = sec.boolean("require_at_jwt", d.require_at_jwt)
    roles = _role_map(sec, "roles", "group")
    client_roles = _role_map(sec, "client_roles", "client")
    sites_sec = sec.section("group_sites")
    group_sites = {str(g): frozenset(s) for g in list(sites_sec.table)
                   if (s := sites_sec.string_list(str(g))) is not None}
    sites_sec.finish()
    mfa_roles = sec.string_list("mfa_roles", pattern=ROLE_RE)
    if mfa_roles is not None and (unknown := sorted(set(mfa_roles) - ROLES.keys())):
        sec.problem("mfa_roles", f"unknown role(s) {', '.join(unknown)}")
    mfa_acr = sec.string_list("mfa_acr")
    mfa_amr = sec.string_list("mfa_amr")
    signin = _read_signin_keys(sec, d)
    sec.finish()
    if len(problems) > before or issuer is None or audience is None:
        return None
    return OidcSection(
        issuer=issuer, audience=audience, **numbers, **claims, employee_claim=employee_claim,
        require_at_jwt=require_at_jwt, roles=roles, client_roles=client_roles,
        group_sites=group_sites,
        mfa_roles=d.mfa_roles if mfa_roles is None else frozenset(mfa_roles),
        mfa_acr=frozenset(mfa_acr or ()),
        mfa_amr=d.mfa_amr if mfa_amr is None else frozenset(mfa_amr), **signin)


def _read_signin_keys(sec: Section, d: OidcSection) -> dict[str, Any]:
    """The sign-in keys of ``[oidc]`` (collector.api.signin): all three of client_id,
    client_secret_file (an absolute path) and redirect_uri, or none."""
    out: dict[str, Any] = {
        "client_id": sec.string("client_id", pattern=re.compile(r"^[\x21-\x7e]{1,200}$")),
        "redirect_uri": sec.string("redirect_uri")}
    secret = sec.string("client_secret_file")
    if secret is not None and not Path(secret).is_absolute():
        sec.problem("client_secret_file", f"must be an absolute path, got {secret[:80]!r}")
    out["client_secret_file"] = None if secret is None else Path(secret)
    uri = out["redirect_uri"]
    if uri is not None:
        u = urllib.parse.urlsplit(uri)
        if u.scheme != "https" or not u.hostname or u.path != "/auth/callback" or u.query:
            sec.problem("redirect_uri", f"must be https://<the API's host[:port]>/auth/"
                                        f"callback, got {uri[:80]!r}")
    given = [k for k in ("client_id", "client_secret_file", "redirect_uri")
             if out[k] is not None]
    if given and len(given) < 3:
        for k in sorted({"client_id", "client_secret_file", "redirect_uri"} - set(given)):
            sec.missing(k, "sign-in needs client_id, client_secret_file and redirect_uri")
    for k, (lo, hi) in {"session_idle_s": (1, 86_400), "session_max_s": (1, 7 * 86_400),
                        "revalidate_s": (1, 86_400)}.items():
        out[k] = sec.integer(k, getattr(d, k), lo=lo, hi=hi)
    if out["session_idle_s"] > out["session_max_s"]:
        sec.problem("session_idle_s", "must not exceed session_max_s")
    return out


# -- names -------------------------------------------------------------------------------

def subject_hash(issuer: str, subject: str) -> str:
    """A stable, safe handle of (iss, sub): 32 hex of SHA-256 over both, NUL-separated."""
    return hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:32]


def principal_name(preferred: str | None, issuer: str, subject: str) -> str:
    """``preferred`` (a client id or username) when it is a valid, unreserved principal
    name, else ``oidc-`` + 16 hex of :func:`subject_hash`."""
    if preferred is not None and PRINCIPAL_RE.fullmatch(preferred) \
            and preferred not in RESERVED:
        return preferred
    return "oidc-" + subject_hash(issuer, subject)[:16]


# -- tokens ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """The verified claims a grant is made from."""

    issuer: str
    subject: str
    client_id: str | None
    username: str | None
    groups: tuple[str, ...]
    employee: str | None
    acr: str | None
    amr: frozenset[str]
    expires_at: int                 # exp, Unix seconds
    kid: str


@dataclass(frozen=True, slots=True)
class OidcGrant:
    name: str
    subject: str                    # subject_hash(iss, sub)
    roles: frozenset[str]           # granted (MFA rule applied)
    withheld: frozenset[str]        # privileged roles this sign-in lacks MFA for
    employee: str | None
    sites: frozenset[str] | None
    machine: bool
    mfa: bool
    identity: OidcIdentity

    def scope_fields(self) -> dict[str, Any]:
        """The scope fields of its roles entry (wire.grants: ``employee``, ``sites``)."""
        out: dict[str, Any] = {}
        if self.employee is not None:
            out["employee"] = self.employee
        if self.sites is not None:
            out["sites"] = sorted(self.sites)
        return out

    def principal(self, created_at: int) -> Principal:
        return Principal(self.name, KIND, self.roles, created_at, None, None,
                         employee_id=self.employee, sites=self.sites)


def looks_like_jwt(token: str) -> bool:
    """Whether a Bearer value is a JWS compact serialisation (three base64url parts, the
    first an object); opaque ``tct_`` tokens are not."""
    parts = token.split(".")
    return len(parts) == 3 and parts[0].startswith("eyJ") and all(parts[:2])


def _fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    problem = _issuer_problem(url)
    if problem is not None:
        raise OidcError(f"refusing to fetch {problem}")
    req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - https or loopback, checked above
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - as above
            raw = r.read(MAX_DOCUMENT_BYTES + 1)
    except (OSError, urllib.error.URLError) as e:
        raise OidcError(f"cannot fetch {url[:120]}: {e}") from e
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise OidcError(f"{url[:120]}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise OidcError(f"{url[:120]}: not JSON ({e})") from e
    if not isinstance(doc, dict):
        raise OidcError(f"{url[:120]}: not a JSON object")
    return doc


def _key_alg(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWKS key is used with, or None (unusable: symmetric, unknown, or
    an ``alg`` that does not fit its ``kty``)."""
    kty = str(jwk.get("kty", ""))
    allowed = KTY_ALGS.get(kty, frozenset())
    alg = jwk.get("alg")
    if alg is None:
        alg = EC_ALG.get(str(jwk.get("crv"))) if kty == "EC" else DEFAULT_ALG.get(kty)
    return str(alg) if alg in allowed else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OidcVerifier:
    """Validates JWT access tokens of one provider; thread-safe (the API runs the network
    part in a worker thread, see :meth:`cached_for`)."""

    def __init__(self, section: OidcSection, *,
                 fetch: Callable[[str, float], dict[str, Any]] = _fetch_json,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.section = section
        self._fetch = fetch
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._discovery: dict[str, Any] | None = None
        self._keys: dict[str, tuple[jwt.PyJWK, str]] = {}
        self._fetched_at: float | None = None
        self._refreshed_at: float | None = None       # last fetch for an unknown kid
        self.fetches = 0                               # JWKS fetches (metrics, tests)
        # Tokens verified already (a client sends one token for its whole lifetime): their
        # claims, re-checked for the time on every use, kept at most jwks_cache_s.
        self._verified: dict[str, tuple[float, dict[str, Any], str]] = {}

    # -- keys ----------------------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        """The provider's discovery document (fetched once; its ``issuer`` must be ours and
        its ``jwks_uri`` https, or http on loopback). Network: call it off the event loop."""
        if self._discovery is None:
            url = self.section.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = self._fetch(url, self.section.http_timeout_s)
            if doc.get("issuer") != self.section.issuer:
                raise OidcError(f"the discovery document at {url[:120]} names issuer "
                                f"{str(doc.get('issuer'))[:120]!r}, not {self.section.issuer!r}")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or _issuer_problem(uri) is not None:
                raise OidcError(f"the discovery document at {url[:120]} has no usable "
                                f"jwks_uri (https, or http on loopback)")
            self._discovery = doc
        return self._discovery

    def _load_keys(self) -> None:
        doc = self._fetch(str(self.discovery()["jwks_uri"]), self.section.http_timeout_s)
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise OidcError("the provider's JWKS has no keys list")
        out: dict[str, tuple[jwt.PyJWK, str]] = {}
        for k in keys:
            if not isinstance(k, dict) or k.get("use", "sig") != "sig" \
                    or not isinstance(k.get("kid"), str):
                continue
            alg = _key_alg(k)
            if alg is None:
                continue          # symmetric or unknown keys are never trusted
            try:
                out[k["kid"]] = (jwt.PyJWK(k, algorithm=alg), alg)
            except jwt.PyJWTError:
                continue
        self._keys = out
        self._fetched_at = self._monotonic()
        self.fetches += 1

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.section.jwks_cache_s

    def cached_for(self, token: str) -> bool:
        """Whether :meth:`verify` of ``token`` needs no network (fresh keys know its kid, or
        an unknown kid may not trigger a refresh yet): then it is pure CPU and may run on
        the event loop."""
        now = self._monotonic()
        hit = self._verified.get(token)
        if hit is not None and now < hit[0]:
            return True
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return True                  # refused without a key
        with self._lock:
            if self._stale(now):
                return False
            return kid in self._keys or not self._refresh_allowed(now)

    def _refresh_allowed(self, now: float) -> bool:
        return self._refreshed_at is None or \
            now - self._refreshed_at >= self.section.jwks_refresh_min_s

    def _key(self, kid: str) -> tuple[jwt.PyJWK, str]:
        now = self._monotonic()
        with self._lock:
            if self._stale(now):
                self._load_keys()
            if kid not in self._keys and self._refresh_allowed(now):
                self._refreshed_at = now          # at most once per jwks_refresh_min_s
                self._load_keys()
            got = self._keys.get(kid)
            algs = sorted({a for _, a in self._keys.values()})
        if got is None:
            raise OidcTokenError(f"unknown signing key kid={kid[:64]!r}: not in the "
                                 f"provider's JWKS ({len(algs)} usable keys)")
        return got

    def allowed_algs(self) -> frozenset[str]:
        with self._lock:
            return frozenset(a for _, a in self._keys.values())

    # -- tokens --------------------------------------------------------------------------
    def verify(self, token: str, *, now_s: float) -> OidcIdentity:
        """The verified identity of access token ``token`` at Unix time ``now_s``, or
        :class:`OidcTokenError` (or :class:`OidcError` when the provider cannot be read)."""
        now = self._monotonic()
        hit = self._verified.get(token)
        if hit is not None and now < hit[0]:
            self._check_times(hit[1], now_s)          # (5) again: it may have expired since
            return self._identity(hit[1], hit[2])
        claims, kid = self._verified_claims(token, now_s, self.section.audience, access=True)
        with self._lock:
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.pop(next(iter(self._verified)))     # the oldest
            self._verified[token] = (now + self.section.jwks_cache_s, claims, kid)
        return self._identity(claims, kid)

    def verify_id_token(self, token: str, *, client_id: str, nonce: str | None,
                        now_s: float) -> OidcIdentity:
        """An ID token (the sign-in's, collector.api.signin): the same steps with ``aud``
        our client id, no ``typ`` rule, and its ``nonce`` equal to the sign-in's (when
        given; constant-time)."""
        claims, kid = self._verified_claims(token, now_s, client_id, access=False)
        if nonce is not None and not hmac.compare_digest(
                str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise OidcTokenError("the ID token's nonce is not this sign-in's")
        return self._identity(claims, kid)

    def _verified_claims(self, token: str, now_s: float, audience: str, *, access: bool
                         ) -> tuple[dict[str, Any], str]:
        if len(token) > MAX_TOKEN_BYTES:
            raise OidcTokenError(f"token longer than {MAX_TOKEN_BYTES} bytes")
        alg, kid, unverified = self._header(token, access=access)
        # (3) the provider's key for kid, and the alg that key is used with
        key, key_alg = self._key(kid)
        if alg != key_alg:
            raise OidcTokenError(f"alg {alg[:20]} does not match key {kid[:64]!r} ({key_alg})")
        claims = self._signed(token, key, key_alg, unverified, audience)
        self._check_times(claims, now_s)
        return claims, kid

    def _header(self, token: str, *, access: bool) -> tuple[str, str, dict[str, Any]]:
        """(1) a JWS of an asymmetric algorithm, typ at+jwt, with a kid; (2) the issuer,
        before any key is looked up, so a token of another provider says so."""
        s = self.section
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise OidcTokenError(f"not a well-formed JWT ({e})") from e
        alg = str(header.get("alg", ""))
        if alg.lower() == "none" or not alg:
            raise OidcTokenError("alg none: unsigned tokens are never accepted")
        if alg.upper().startswith("HS"):
            raise OidcTokenError(f"alg {alg[:20]}: symmetric (HMAC) tokens are never accepted")
        if access and s.require_at_jwt and str(header.get("typ", "")).lower() not in AT_JWT_TYPES:
            raise OidcTokenError(f"typ {str(header.get('typ'))[:40]!r} is not at+jwt: not an "
                                 f"access token (RFC 9068; an ID token is not one)")
        iss = unverified.get("iss")
        if iss != s.issuer:
            raise OidcTokenError(f"issued by {str(iss)[:120]!r}, not the configured issuer "
                                 f"{s.issuer!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OidcTokenError("no kid in the header: cannot pick the provider's key")
        return alg, kid, unverified

    def _signed(self, token: str, key: jwt.PyJWK, alg: str, unverified: Mapping[str, Any],
                audience: str) -> dict[str, Any]:
        """(4) signature, iss and aud (PyJWT); the times are :meth:`_check_times`'."""
        s = self.section
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=audience, issuer=s.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["iss", "sub", "aud", "exp", "iat"]})
        except jwt.InvalidSignatureError as e:
            raise OidcTokenError("bad signature: the token was altered or not signed by "
                                 "the provider") from e
        except jwt.InvalidAudienceError as e:
            raise OidcTokenError(f"audience {str(unverified.get('aud'))[:120]!r} is not "
                                 f"{audience!r}") from e
        except jwt.MissingRequiredClaimError as e:
            raise OidcTokenError(f"required claim missing: {e.claim}") from e
        except jwt.PyJWTError as e:
            raise OidcTokenError(f"refused: {e}") from e
        return claims

    def _check_times(self, claims: Mapping[str, Any], now_s: float) -> None:
        """(5) exp, nbf and iat against now_s, with leeway_s for clock skew."""
        leeway = self.section.leeway_s
        times: dict[str, float] = {}
        for name in ("exp", "iat", "nbf"):
            v = claims.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise OidcTokenError(f"{name} is not a number")
            times[name] = float(v)
        exp, iat, nbf = times["exp"], times["iat"], times.get("nbf")
        if now_s > exp + leeway:
            raise OidcTokenError(f"expired at {_iso(exp)} ({int(now_s - exp)} s ago)")
        if nbf is not None and nbf > now_s + leeway:
            raise OidcTokenError(f"not valid before {_iso(nbf)}")
        if iat > now_s + leeway:
            raise OidcTokenError(f"issued in the future ({_iso(iat)})")

    def _identity(self, claims: Mapping[str, Any], kid: str) -> OidcIdentity:
        s = self.section
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise OidcTokenError("sub is not a non-empty string")
        client = claims.get("client_id", claims.get("azp"))
        groups = claims.get(s.groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) \
                or len(groups) > MAX_GROUPS:
            raise OidcTokenError(f"{s.groups_claim} is not a list of at most {MAX_GROUPS} "
                                 f"strings")
        amr = claims.get("amr", [])
        if not isinstance(amr, list) or not all(isinstance(a, str) for a in amr):
            raise OidcTokenError("amr is not a list of strings")
        emp = claims.get(s.employee_claim) if s.employee_claim else None
        username = claims.get(s.username_claim)
        acr = claims.get("acr")
        return OidcIdentity(
            issuer=str(claims["iss"]), subject=sub,
            client_id=client if isinstance(client, str) else None,
            username=username if isinstance(username, str) else None,
            groups=tuple(groups), employee=emp if isinstance(emp, str) and emp else None,
            acr=acr if isinstance(acr, str) else None, amr=frozenset(amr),
            expires_at=int(claims["exp"]), kid=kid)


# -- principals and their ledger trace -----------------------------------------------------

_ROW_SQL = ("SELECT p.kind, p.created_by, p.created_at, p.disabled_at, b.body "
            "FROM tc_principals p LEFT JOIN bodies b ON b.idx = p.roles_idx WHERE p.name = ?")


def _scope_key(fields: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in fields.items()
                        if k in ("employee", "sites")))


class OidcPrincipals:
    """The ``oidc`` principals of one ledger: :meth:`current` reads (one indexed read, like a
    certificate's) whether the ledger already says what a grant gives; :meth:`record` makes
    it say so with an ``oidc-roles`` entry. Disabling an OIDC principal (``token disable``)
    refuses it at once, whatever its tokens say."""

    def __init__(self, store: SQLStore, issuer: str, *, reader: SQLStore | None = None,
                 lock: threading.Lock | None = None) -> None:
        self.store = store
        self.reader = reader or store
        self.actor = f"oidc:{issuer}"[:200]
        self._lock = lock or threading.Lock()     # one per process: see OidcAuth

    @staticmethod
    def _judge(grant: OidcGrant, row: tuple[Any, ...] | None
               ) -> tuple[bool, frozenset[str] | None, int | None]:
        """(current, recorded roles, created_at) of ``grant`` given its row; raises for a
        name that another subject or a token/cert principal holds, or a disabled one."""
        if row is None:
            return False, None, None
        kind, by, created, disabled, body = row
        if str(kind) != KIND:
            raise OidcTokenError(f"principal name {grant.name!r} is a {kind} principal; an "
                                 f"OIDC sign-in cannot use it")
        if str(by) != SUBJECT_PREFIX + grant.subject:
            raise OidcTokenError(f"principal name {grant.name!r} belongs to another OIDC "
                                 f"subject; this one cannot use it")
        if disabled is not None:
            raise OidcTokenError(f"principal {grant.name} is disabled")
        try:
            old = json.loads(bytes(body)) if body is not None else {}
        except (ValueError, TypeError):
            old = {}
        roles = frozenset(old.get("roles", ())) if isinstance(old, dict) else frozenset()
        scope = _scope_key(old) if isinstance(old, dict) else ()
        current = roles == grant.roles and scope == _scope_key(grant.scope_fields())
        return current, roles, int(created)

    def current(self, grant: OidcGrant) -> Principal | None:
        """The principal when the ledger already records ``grant``'s roles and scope, else
        None (then :meth:`record`)."""
        rows = self.reader.query(_ROW_SQL, (grant.name,))
        ok, _, created = self._judge(grant, rows[0] if rows else None)
        return grant.principal(created) if ok and created is not None else None

    def record(self, grant: OidcGrant, *, now_us: int) -> Principal:
        """Make the ledger say what ``grant`` gives (an ``oidc-roles`` entry and the access
        table rows, in one transaction) unless it already does; the principal."""
        check_roles(grant.roles)
        with self._lock, self.store.transaction(now_us, what="recording OIDC roles") as tx:
            rows = tx.rows(_ROW_SQL, (grant.name,))
            ok, previous, created = self._judge(grant, rows[0] if rows else None)
            if ok and created is not None:
                return grant.principal(created)      # another request recorded it first
            ident = grant.identity
            idx = tx.record("access", access_change(
                self.actor, ACTION, now_us, outcome="done", principal=grant.name, kind=KIND,
                roles=sorted(grant.roles),
                previous=None if previous is None else sorted(previous),
                subject=grant.subject, client=ident.client_id,
                groups=sorted(ident.groups)[:MAX_GROUPS] or None,
                mfa=grant.mfa, withheld=sorted(grant.withheld) or None,
                **grant.scope_fields()))
            if previous is None:
                access_tables.insert_principal(tx, grant.name, KIND, grant.roles,
                                               actor=SUBJECT_PREFIX + grant.subject,
                                               now_us=now_us, roles_idx=idx)
                created = now_us
            else:
                access_tables.replace_roles(tx, grant.name, grant.roles, actor=self.actor,
                                            now_us=now_us, roles_idx=idx)
        assert created is not None  # noqa: S101 - set on both paths
        return grant.principal(created)


class OidcAuth:
    """What the API holds for ``[oidc]``: the section, one verifier (its key cache) and the
    lock that serialises recording role changes in this process."""

    def __init__(self, section: OidcSection, *,
                 fetch: Callable[[str, float], dict[str, Any]] = _fetch_json,
                 wall: Callable[[], float] = time.time) -> None:
        self.section = section
        self.verifier = OidcVerifier(section, fetch=fetch)
        # Token times are the provider's wall clock (Unix seconds), not the API's clock.
        self.wall = wall
        self.lock = threading.Lock()

    def principals(self, store: SQLStore, reader: SQLStore | None = None) -> OidcPrincipals:
        return OidcPrincipals(store, self.section.issuer, reader=reader, lock=self.lock)


def withheld_message(grant: OidcGrant, needed: Iterable[str], section: OidcSection) -> str:
    roles = ", ".join(sorted(set(needed) & grant.withheld))
    how = []
    if section.mfa_acr:
        how.append(f"acr {' or '.join(sorted(section.mfa_acr))}")
    if section.mfa_amr:
        how.append(f"amr with {' or '.join(sorted(section.mfa_amr))}")
    return (f"{grant.name}: role {roles} needs multi-factor authentication (MFA); this "
            f"sign-in has none ({' or '.join(how) or 'no MFA rule configured'}): sign in "
            f"again with MFA")
