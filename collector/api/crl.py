"""The API's certificate revocation list, reloaded while the API runs (no restart).

OpenSSL cannot drop a CRL from a context it has loaded, and a second CRL of the same CA
loaded into that context is not the one it checks (tried: a certificate revoked by the newer
CRL still completed the handshake), so a new CRL means a new ``SSLContext``:

- :class:`CrlWatch` polls the CRL file's (mtime, size, inode) every ``poll_s`` on the event
  loop (one ``stat``, no read); when it changes, it builds the new context and parses the
  revoked serials in a worker thread, then swaps both in at once on the loop;
- the listening context's SNI callback (called by OpenSSL for every ClientHello, with or
  without a server name) moves each new connection onto the current context, so a revoked
  client certificate fails its handshake from the swap on;
- a connection opened before the swap keeps the certificate it was verified with, so the
  middleware looks each request's peer certificate serial up in :attr:`CrlWatch.revoked`
  (one set lookup) and refuses it (401, connection closed).

A CRL that cannot be read, parsed or verified against the CA is an ERROR in the log and
changes nothing: the previous context and set stay (never fail open, never crash); the next
change of the file is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger("timeclock.api")

Signature = tuple[int, int, int]


class CrlError(Exception):
    """A CRL that cannot be used (unreadable, not PEM, not signed by the client CA)."""


def revoked_serials(crl_file: Path, ca_file: Path) -> frozenset[int]:
    """Serials revoked by ``crl_file``, whose signature must verify with ``ca_file``'s key."""
    try:
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as e:
        raise CrlError(f"{crl_file}: cannot load the CRL: {e}") from e
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or \
            not crl.is_signature_valid(key):
        raise CrlError(f"{crl_file}: not signed by the client CA {ca_file}")
    return frozenset(r.serial_number for r in crl)


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class CrlWatch:
    """The current client-certificate context and revoked serials (see module doc)."""

    def __init__(self, crl_file: Path, ca_file: Path, listening: ssl.SSLContext,
                 build: Callable[[], ssl.SSLContext], *, poll_s: float = 1.0) -> None:
        self.crl_file, self.ca_file = crl_file, ca_file
        self.build = build
        self.poll_s = poll_s
        self.context = listening
        self.revoked = revoked_serials(crl_file, ca_file)
        self._seen = _signature(crl_file)
        self.reloads = 0
        listening.sni_callback = self._on_hello

    def _on_hello(self, obj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # Runs inside the handshake: must not raise (OpenSSL would abort the handshake).
        if obj.context is not self.context:
            obj.context = self.context

    def is_revoked(self, peercert: dict[str, Any]) -> bool:
        serial = peercert.get("serialNumber")
        return isinstance(serial, str) and int(serial, 16) in self.revoked

    def _load(self) -> tuple[ssl.SSLContext, frozenset[int]]:
        revoked = revoked_serials(self.crl_file, self.ca_file)
        return self.build(), revoked

    async def poll(self) -> bool:
        """Reload if the file changed since the last look; True when a new CRL is in force."""
        sig = _signature(self.crl_file)
        if sig is None or sig == self._seen:
            return False
        self._seen = sig
        try:
            context, revoked = await asyncio.to_thread(self._load)
        except Exception as e:  # noqa: BLE001 - any failure keeps the CRL in force (logged)
            log.error("API CRL %s changed but was not loaded (the previous one stays in "
                      "force): %s", self.crl_file, e)
            return False
        self.context, self.revoked = context, revoked
        self.reloads += 1
        log.info("API CRL %s reloaded: %d revoked serials", self.crl_file, len(revoked))
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll()
            except Exception:  # top of a long-running loop: keep watching
                log.exception("watching the API CRL %s failed", self.crl_file)


CRL_WATCH = web.AppKey("crl_watch", CrlWatch)


def install(app: web.Application, watch: CrlWatch) -> None:
    """Put ``watch`` on ``app`` (the middleware reads it) and run it while the app runs."""
    app[CRL_WATCH] = watch

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watching)
