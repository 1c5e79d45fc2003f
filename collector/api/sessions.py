"""Server-side sessions of people signed in through OIDC (collector.api.signin).

A session is a random id (``secrets.token_urlsafe(32)``, 256 bits) sent to the browser as the
cookie :data:`COOKIE` (``HttpOnly; Secure; SameSite=Strict; Path=/``); everything else stays
here, in memory: the principal, its granted and withheld roles, the provider's refresh token.
A restart of the collector therefore signs everyone out (docs/operations.md says so).

Invariants:
- the store keys sessions by the SHA-256 of the id, never the id itself, and compares in
  constant time through the dictionary lookup of that hash; an id is never logged or
  recorded (access entries carry :func:`session_ref`, a short hash);
- a session ends at ``last_seen + idle_s`` (idle timeout) or ``created + max_s`` (absolute
  lifetime), whichever comes first; ``touch`` never moves the absolute end;
- a session whose re-validation at the provider is due (``revalidate_s`` since the last one)
  is not used before it has been re-validated (collector.api.signin does it);
- login states (state, nonce, PKCE verifier) are single-use: :meth:`LoginStates.take`
  removes the state it returns, so a replayed callback finds nothing; they expire after
  ``LOGIN_TTL_S`` and at most ``LOGIN_STATES_MAX`` wait (the oldest is dropped first);
- at most ``sessions_max`` sessions live; a new sign-in beyond that ends the oldest one
  (recorded like any other end).

Times are µs (the API's injected clock), so tests move time instead of sleeping.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import secrets
from dataclasses import dataclass, field, replace

COOKIE = "tc_session"
S_US = 1_000_000
LOGIN_TTL_S = 600
LOGIN_STATES_MAX = 10_000


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """``[oidc]`` session keys (docs/operations.md "Sign-in and sessions")."""

    idle_s: int = 15 * 60          # session_idle_s
    max_s: int = 8 * 3600          # session_max_s
    revalidate_s: int = 60         # revalidate_s: refresh-token grant at most this often
    sessions_max: int = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in person. ``roles``: granted; ``withheld``: privileged roles the claims
    map to but that this sign-in did not get (no MFA)."""

    ref: str                        # session_ref(id): what access entries name
    principal: str
    subject: str                    # the provider's ``sub``
    roles: frozenset[str]
    withheld: frozenset[str]
    employee_id: str | None
    sites: frozenset[str] | None
    mfa: bool
    created_at: int
    last_seen_at: int
    revalidated_at: int
    csrf: str                       # the token a state-changing request without Origin sends
    refresh_token: str | None = field(default=None, repr=False)

    def idle_end(self, settings: SessionSettings) -> int:
        return self.last_seen_at + settings.idle_s * S_US

    def absolute_end(self, settings: SessionSettings) -> int:
        return self.created_at + settings.max_s * S_US

    def expires_at(self, settings: SessionSettings) -> int:
        return min(self.idle_end(settings), self.absolute_end(settings))

    def end_reason(self, settings: SessionSettings, now_us: int) -> str | None:
        """``"absolute"``/``"idle"`` when the session is over at ``now_us``, else None."""
        if now_us >= self.absolute_end(settings):
            return "absolute"
        if now_us >= self.idle_end(settings):
            return "idle"
        return None

    def revalidation_due(self, settings: SessionSettings, now_us: int) -> bool:
        return now_us - self.revalidated_at >= settings.revalidate_s * S_US


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()


def session_ref(session_id: str) -> str:
    """What an access entry says of a session: 16 hex digits of a hash, never the id."""
    return hashlib.sha256(b"timeclock-session:" + session_id.encode("utf-8", "replace")
                          ).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Ended:
    """A session that ended, and why (``idle``, ``absolute``, ``sign-out``, ``revalidation``,
    ``capacity``, ``replaced``): what the access entry of its end says."""

    session: Session
    reason: str


class SessionStore:
    """The live sessions (see module doc). Not thread-safe: the API's event loop owns it."""

    def __init__(self, settings: SessionSettings | None = None) -> None:
        self.settings = settings or SessionSettings()
        self._by_key: collections.OrderedDict[bytes, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def create(self, *, principal: str, subject: str, roles: frozenset[str],
               withheld: frozenset[str], employee_id: str | None,
               sites: frozenset[str] | None, mfa: bool, refresh_token: str | None,
               now_us: int) -> tuple[str, Session, list[Ended]]:
        """A new session: its id (for the cookie, never stored), the session, and the
        sessions ended to make room for it."""
        sid = secrets.token_urlsafe(32)
        s = Session(ref=session_ref(sid), principal=principal, subject=subject, roles=roles,
                    withheld=withheld, employee_id=employee_id, sites=sites, mfa=mfa,
                    created_at=now_us, last_seen_at=now_us, revalidated_at=now_us,
                    csrf=secrets.token_urlsafe(24), refresh_token=refresh_token)
        ended: list[Ended] = []
        while len(self._by_key) >= self.settings.sessions_max:
            _, oldest = self._by_key.popitem(last=False)
            ended.append(Ended(oldest, "capacity"))
        self._by_key[_key(sid)] = s
        return sid, s, ended

    def get(self, session_id: str, now_us: int) -> tuple[Session | None, Ended | None]:
        """The live session of ``session_id`` (None if unknown), or the :class:`Ended` of
        the one that just ran out (removed)."""
        k = _key(session_id)
        s = self._by_key.get(k)
        if s is None:
            return None, None
        reason = s.end_reason(self.settings, now_us)
        if reason is not None:
            del self._by_key[k]
            return None, Ended(s, reason)
        return s, None

    def touch(self, session_id: str, now_us: int) -> Session | None:
        """Record a use (moves the idle end, never the absolute one)."""
        return self._update(session_id, last_seen_at=now_us)

    def revalidated(self, session_id: str, now_us: int, *, roles: frozenset[str],
                    refresh_token: str | None) -> Session | None:
        """The provider confirmed the session at ``now_us``: roles can only shrink (a role
        added at the provider needs a new sign-in), the refresh token may rotate."""
        s = self._by_key.get(_key(session_id))
        if s is None:
            return None
        return self._update(session_id, revalidated_at=now_us, roles=s.roles & roles,
                            refresh_token=refresh_token or s.refresh_token)

    def _update(self, session_id: str, **changes: object) -> Session | None:
        k = _key(session_id)
        s = self._by_key.get(k)
        if s is None:
            return None
        s = replace(s, **changes)  # type: ignore[arg-type] # the fields named by the callers
        self._by_key[k] = s
        return s

    def end(self, session_id: str) -> Session | None:
        """Remove a session (sign-out, refused re-validation); the session, or None."""
        return self._by_key.pop(_key(session_id), None)

    def sweep(self, now_us: int) -> list[Ended]:
        """Remove and return every session that has run out by ``now_us``."""
        ended = [(k, s, r) for k, s in self._by_key.items()
                 if (r := s.end_reason(self.settings, now_us)) is not None]
        for k, _, _ in ended:
            del self._by_key[k]
        return [Ended(s, r) for _, s, r in ended]


@dataclass(frozen=True, slots=True)
class LoginState:
    """What a sign-in started with, kept here until its callback: the provider sees only
    ``state``, ``nonce`` and the verifier's S256 challenge."""

    state: str
    nonce: str
    verifier: str = field(repr=False)
    next_path: str
    created_at: int

    @property
    def challenge(self) -> str:
        """RFC 7636 S256: BASE64URL(SHA256(ASCII(code_verifier))), no padding."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class LoginStates:
    """Pending sign-ins by state (see module doc: single-use, bounded, expiring)."""

    def __init__(self, *, max_pending: int = LOGIN_STATES_MAX, ttl_s: int = LOGIN_TTL_S) -> None:
        self.max_pending, self.ttl_s = max_pending, ttl_s
        self._by_state: collections.OrderedDict[str, LoginState] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._by_state)

    def start(self, next_path: str, now_us: int) -> LoginState:
        # 43-char verifier (RFC 7636 allows 43..128 of the unreserved set; token_urlsafe is).
        ls = LoginState(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                        verifier=secrets.token_urlsafe(48), next_path=next_path,
                        created_at=now_us)
        self._drop_expired(now_us)
        while len(self._by_state) >= self.max_pending:
            self._by_state.popitem(last=False)
        self._by_state[ls.state] = ls
        return ls

    def take(self, state: str, now_us: int) -> LoginState | None:
        """The pending sign-in of ``state``, removed (a second call returns None)."""
        self._drop_expired(now_us)
        return self._by_state.pop(state, None)

    def _drop_expired(self, now_us: int) -> None:
        while self._by_state:
            first = next(iter(self._by_state.values()))
            if now_us - first.created_at < self.ttl_s * S_US:
                break
            self._by_state.popitem(last=False)
