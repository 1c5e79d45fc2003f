"""Errors of the wire contract. Every failure names the field or check that failed.

Security failures have their own leaf types so that callers (ingest, the verifier) can map
them to quarantine reasons without parsing messages.
"""

from __future__ import annotations


class WireError(Exception):
    """Base of every wire-contract error; the message is meant for an operator."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DecodeError(WireError):
    """Bytes that are not strict canonical-contract JSON, or a field of the wrong type/shape."""

    reason = "malformed"


class OversizeError(DecodeError):
    """Input larger than the contract allows."""

    reason = "oversized"


class SignatureError(WireError):
    """An Ed25519 signature that does not verify over the domain-prefixed canonical bytes."""

    reason = "bad-signature"


class KeyMismatchError(WireError):
    """A key id that does not match the key it is checked against."""

    reason = "key-mismatch"


class ChainBrokenError(WireError):
    """A hash link (punch ``prev`` or ledger entry ``prev``) that does not match."""

    reason = "chain-broken"


class ProofError(WireError):
    """A Merkle inclusion or consistency proof (DESIGN.md §8.1) that does not verify, or a
    proof that cannot be produced for the sizes asked."""

    reason = "bad-proof"


class ReplayError(WireError):
    """A (device, seq) already recorded."""

    reason = "replay"


class KeyFileError(WireError):
    """A private key file that is missing, malformed or readable by group/others."""

    reason = "key-file"
