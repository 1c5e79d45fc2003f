"""A file-less KEK for the keyring tests: XChaCha20-Poly1305 under 32 random bytes, with the
``Kek`` interface of collector.ledger.kek (wrap/unwrap with the caller's aad, ``kek_id``)."""

from __future__ import annotations

import hashlib
import secrets

from nacl import bindings as sodium


class MemoryKek:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self.kek_id = "mem-" + hashlib.sha256(self._key).hexdigest()[:16]
        self.unwraps = 0

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(24)
        return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(dek, aad, nonce,
                                                                         self._key)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        self.unwraps += 1
        out: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            wrapped[24:], aad, wrapped[:24], self._key)
        return out
