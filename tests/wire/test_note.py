"""DESIGN.md §8.2–8.3: checkpoint v2 as a C2SP signed note, and C2SP tlog-cosignature v1.

The v2 worked example (docs/protocol.md §12.6) builds on tests/vectors/punch-v1.json: its log
(collector) key signs the checkpoint of its four ledger entries, and its device key, as the
clock witness, cosigns it. The Go reference vector (golang.org/x/mod/sumdb/note note_test.go,
"PeterNeumann") checks key ids, vkeys and signature lines against an independent
implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from wire.errors import DecodeError, KeyMismatchError, OversizeError, SignatureError
from wire.keys import SigningKey
from wire.ledger import Entry
from wire.merkle import MemoryTree, entry_leaf_hash, root
from wire.note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_SIGNATURES,
    Checkpoint,
    Note,
    NoteSignature,
    NoteVerifier,
    cosigned_by,
    note_key_id,
    sign_note,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "punch-v1.json").read_text())

ORIGIN = "acme.example/timeclock"
WITNESS = "acme.example/timeclock/devices/clock-0017"
TIMESTAMP = 1764140462
ROOT_B64 = "fpjVpPYRw1vdz2Sndit6NexOpSQ+wEgE185ABAv+JpQ="
BODY = f"{ORIGIN}\n4\n{ROOT_B64}\n"
LOG_SIG = ("tW2Dhd3NCesJzf4aMSHiLDhed73X8Gxm1S0kOoUH3YUG+skuHr1SdKxUgQ+CkLwCrDkEiv279Jr4"
           "IMy1wIPu2+Xehwo=")
COSIG = ("g8NUcAAAAABpJqWu2P7tQxG9k0Ie2k0Qaxq5FFahXXZmHSGLiZhO938E9uy0Oqr7HcFE8LW8w77ik7iYu3"
         "VI5DlEkfoSHZ2ZceGZAA==")
NOTE = f"{BODY}\n\u2014 {ORIGIN} {LOG_SIG}\n"
COSIGNED_NOTE = f"{NOTE}\u2014 {WITNESS} {COSIG}\n"
LOG_VKEY = "acme.example/timeclock+b56d8385+ASmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X"
WITNESS_VKEY = ("acme.example/timeclock/devices/clock-0017+83c35470+"
                "BAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4")

# golang.org/x/mod/sumdb/note note_test.go
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"   # 0x01 ‖ Ed25519 seed
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_SIG_LINE = ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
               "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


@pytest.fixture(scope="module")
def log_key() -> SigningKey:
    return SigningKey(bytes.fromhex(VECTORS["collector_key"]["seed_hex"]))


@pytest.fixture(scope="module")
def witness_key() -> SigningKey:
    return SigningKey(bytes.fromhex(VECTORS["device_key"]["seed_hex"]))


@pytest.fixture(scope="module")
def log(log_key: SigningKey) -> NoteVerifier:
    return NoteVerifier(ORIGIN, log_key.verify_key)


@pytest.fixture(scope="module")
def witness(witness_key: SigningKey) -> NoteVerifier:
    return NoteVerifier(WITNESS, witness_key.verify_key, COSIGNATURE_V1)


@pytest.fixture(scope="module")
def cp() -> Checkpoint:
    tree = MemoryTree()
    tree.append(entry_leaf_hash(Entry.from_dict(row["entry"])) for row in VECTORS["ledger"])
    return Checkpoint(ORIGIN, 4, root(tree, 4))


# --- fixed vectors -----------------------------------------------------------------------------

def test_checkpoint_vector(cp: Checkpoint, log_key: SigningKey, log: NoteVerifier) -> None:
    assert base64.b64encode(cp.root).decode() == ROOT_B64
    assert cp.body() == BODY.encode()
    assert cp.sign(log_key) == NOTE
    assert Checkpoint.open(NOTE, log) == cp
    assert Checkpoint.open(NOTE.encode(), log) == cp


def test_cosignature_vector(cp: Checkpoint, witness_key: SigningKey,
                            witness: NoteVerifier, log: NoteVerifier) -> None:
    assert cp.cosignature_message(TIMESTAMP) == (
        b"cosignature/v1\ntime 1764140462\n" + BODY.encode())
    sig = cp.cosign(witness_key, WITNESS, timestamp=TIMESTAMP)
    assert sig.line() == f"\u2014 {WITNESS} {COSIG}\n"
    assert Note.from_text(NOTE).with_signature(sig).to_text() == COSIGNED_NOTE
    assert cp.verify_cosignature(COSIGNED_NOTE, witness) == TIMESTAMP
    # the log still opens it: the witness line is a signature of a key it was not given
    assert Checkpoint.open(COSIGNED_NOTE, log) == cp
    raw = base64.b64decode(COSIG)
    assert raw[:4] == witness.key_id
    assert struct.unpack(">Q", raw[4:12]) == (TIMESTAMP,)


def test_key_ids_independently(log_key: SigningKey, witness_key: SigningKey) -> None:
    pub = log_key.verify_key.raw
    assert note_key_id(ORIGIN, ED25519, pub) == \
        hashlib.sha256(b"acme.example/timeclock\n\x01" + pub).digest()[:4]
    assert note_key_id(ORIGIN, ED25519, pub).hex() == "b56d8385"
    wpub = witness_key.verify_key.raw
    assert note_key_id(WITNESS, COSIGNATURE_V1, wpub) == hashlib.sha256(
        b"acme.example/timeclock/devices/clock-0017\n\x04" + wpub).digest()[:4]
    assert note_key_id(WITNESS, COSIGNATURE_V1, wpub).hex() == "83c35470"
    # the same key under the other type has another id
    assert note_key_id(WITNESS, ED25519, wpub) != note_key_id(WITNESS, COSIGNATURE_V1, wpub)


def test_vkeys(log: NoteVerifier, witness: NoteVerifier) -> None:
    assert log.vkey() == LOG_VKEY
    assert witness.vkey() == WITNESS_VKEY
    assert NoteVerifier.from_vkey(LOG_VKEY) == log
    assert NoteVerifier.from_vkey(WITNESS_VKEY) == witness
    assert NoteVerifier.from_vkey(LOG_VKEY.replace("b56d8385", "B56D8385")) == log


def test_go_reference_note() -> None:
    """The Go reference implementation's key and note, reproduced byte for byte."""
    skey = base64.b64decode(GO_SKEY_B64)
    assert skey[0] == ED25519
    key = SigningKey(skey[1:])
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    assert verifier.key == key.verify_key
    assert NoteVerifier("PeterNeumann", key.verify_key).vkey() == GO_VKEY
    assert sign_note(GO_TEXT, key, "PeterNeumann").line() == GO_SIG_LINE
    note = Note.from_text(GO_TEXT + "\n" + GO_SIG_LINE)
    note.verify(verifier)
    assert note.body == GO_TEXT
    with pytest.raises(DecodeError, match="checkpoint body has 2 line"):
        Checkpoint.open(GO_TEXT + "\n" + GO_SIG_LINE, verifier)


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize(("origin", "size"), [
    ("example.com/log", 0), ("a", 1), ("ex.example/ünïcode", 2**53 - 1), ("x/timeclock/y", 10),
])
def test_sign_open_round_trip(origin: str, size: int) -> None:
    key = SigningKey.generate()
    cp = Checkpoint(origin, size, hashlib.sha256(origin.encode()).digest())
    text = cp.sign(key)
    assert Checkpoint.open(text, NoteVerifier(origin, key.verify_key)) == cp
    assert Checkpoint.from_body(cp.body_text()) == cp


def test_unknown_signatures_are_kept_and_ignored(cp: Checkpoint, log: NoteVerifier,
                                                 witness: NoteVerifier) -> None:
    other = SigningKey.generate()
    extra = sign_note(BODY, other, "someone.example/else")
    garbage = NoteSignature(WITNESS, b"\xde\xad\xbe\xef", b"\x00" * 72)  # a name clash only
    note = Note.from_text(COSIGNED_NOTE).with_signature(extra).with_signature(garbage)
    text = note.to_text()
    reparsed = Note.from_text(text)
    assert reparsed.to_text() == text
    assert [s.name for s in reparsed.signatures] == [ORIGIN, WITNESS, "someone.example/else",
                                                     WITNESS]
    assert Checkpoint.open(text, log) == cp
    assert cp.verify_cosignature(text, witness) == TIMESTAMP
    assert cosigned_by(cp, reparsed, [witness, NoteVerifier(
        "w.example", other.verify_key, COSIGNATURE_V1)]) == [WITNESS]


# --- tampering ---------------------------------------------------------------------------------

def _note_with(body: str = BODY, name: str = ORIGIN, sig: str = LOG_SIG) -> str:
    return f"{body}\n\u2014 {name} {sig}\n"


def _flip_b64(text: str, byte: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[byte] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


OTHER_ROOT = base64.b64encode(b"\x01" * 32).decode()
TAMPERED: list[tuple[str, str, type[Exception], str]] = [
    ("size changed", _note_with(body=f"{ORIGIN}\n5\n{ROOT_B64}\n"), SignatureError,
     "does not verify"),
    ("root changed", _note_with(body=f"{ORIGIN}\n4\n{OTHER_ROOT}\n"), SignatureError,
     "does not verify"),
    ("signature bit", _note_with(sig=_flip_b64(LOG_SIG, 10)), SignatureError, "does not verify"),
    ("key id bit", _note_with(sig=_flip_b64(LOG_SIG, 0)), SignatureError,
     "not signed by 'acme.example/timeclock'"),
    ("name changed", _note_with(name="acme.example/timeclocks"), SignatureError,
     "not signed by"),
    ("signature truncated", _note_with(sig=base64.b64encode(
        base64.b64decode(LOG_SIG)[:-1]).decode()), SignatureError, "63 bytes, expected 64"),
    ("origin changed", _note_with(body=f"acme.example/other\n4\n{ROOT_B64}\n"),
     KeyMismatchError, "not the log key's name"),
]


@pytest.mark.parametrize(("case", "text", "error", "message"), TAMPERED,
                         ids=[c[0] for c in TAMPERED])
def test_tampered_notes_are_refused(case: str, text: str, error: type[Exception], message: str,
                                    log: NoteVerifier) -> None:
    with pytest.raises(error, match=message):
        Checkpoint.open(text, log)


def test_wrong_key_is_refused(log_key: SigningKey) -> None:
    stranger = NoteVerifier(ORIGIN, SigningKey.generate().verify_key)
    with pytest.raises(SignatureError, match="not signed by"):
        Checkpoint.open(NOTE, stranger)
    # same name and a forged key id: the signature is checked and fails
    forged = NoteSignature(ORIGIN, stranger.key_id, base64.b64decode(LOG_SIG)[4:])
    with pytest.raises(SignatureError, match="does not verify"):
        Checkpoint.open(Note(BODY, (forged,)).to_text(), stranger)
    with pytest.raises(KeyMismatchError, match="not a note-signing"):
        Checkpoint.open(NOTE, NoteVerifier(ORIGIN, log_key.verify_key, COSIGNATURE_V1))


def test_tampered_cosignatures_are_refused(cp: Checkpoint, witness: NoteVerifier,
                                           witness_key: SigningKey, log: NoteVerifier) -> None:
    raw = base64.b64decode(COSIG)
    for byte, message in [(4, "does not verify"), (11, "does not verify"),
                          (20, "does not verify"), (2, "not signed by")]:
        bad = bytearray(raw)
        bad[byte] ^= 0x01
        text = f"{NOTE}\u2014 {WITNESS} {base64.b64encode(bytes(bad)).decode()}\n"
        with pytest.raises(SignatureError, match=message):
            cp.verify_cosignature(text, witness)
    # the timestamp is signed: another time in the line does not verify
    forged = struct.pack(">Q", TIMESTAMP + 1) + raw[12:]
    text = f"{NOTE}\u2014 {WITNESS} {base64.b64encode(raw[:4] + forged).decode()}\n"
    with pytest.raises(SignatureError, match="does not verify"):
        cp.verify_cosignature(text, witness)
    # a cosignature of another checkpoint
    other = Checkpoint(ORIGIN, 5, cp.root)
    with pytest.raises(SignatureError, match="another checkpoint"):
        other.verify_cosignature(COSIGNED_NOTE, witness)
    # a plain (0x01) signature by the witness key is not a cosignature
    plain = sign_note(BODY, witness_key, WITNESS)
    with pytest.raises(SignatureError, match="not signed by"):
        cp.verify_cosignature(Note.from_text(NOTE).with_signature(plain), witness)
    with pytest.raises(KeyMismatchError, match="not a cosignature/v1"):
        cp.verify_cosignature(COSIGNED_NOTE, log)
    # no line by that witness
    with pytest.raises(SignatureError, match="not signed by"):
        cp.verify_cosignature(NOTE, witness)
    # a failing known witness fails quorum counting rather than being skipped
    bad = bytearray(raw)
    bad[30] ^= 1
    broken = Note.from_text(f"{NOTE}\u2014 {WITNESS} {base64.b64encode(bytes(bad)).decode()}\n")
    with pytest.raises(SignatureError, match="does not verify"):
        cosigned_by(cp, broken, [witness])


@pytest.mark.parametrize("timestamp", [-1, 2**63, True])
def test_cosign_refuses_bad_timestamps(cp: Checkpoint, witness_key: SigningKey,
                                       timestamp: int) -> None:
    with pytest.raises(DecodeError, match="timestamp must be an integer"):
        cp.cosign(witness_key, WITNESS, timestamp=timestamp)


def test_cosignature_timestamp_above_2_63_is_refused(cp: Checkpoint,
                                                     witness: NoteVerifier) -> None:
    raw = base64.b64decode(COSIG)
    big = raw[:4] + struct.pack(">Q", 2**63) + raw[12:]
    text = f"{NOTE}\u2014 {WITNESS} {base64.b64encode(big).decode()}\n"
    with pytest.raises(SignatureError, match=r"timestamp 9223372036854775808 > 2\^63"):
        cp.verify_cosignature(text, witness)


# --- malformed input ---------------------------------------------------------------------------

SIG_LINE = f"\u2014 {ORIGIN} {LOG_SIG}\n"
MALFORMED: list[tuple[str, str | bytes, type[Exception], str]] = [
    ("reserved origin", _note_with(body=f"timeclock/ledger\n4\n{ROOT_B64}\n"), DecodeError,
     "starts with 'timeclock/', which is reserved"),
    ("reserved origin, bare", _note_with(body=f"timeclock/\n4\n{ROOT_B64}\n"), DecodeError,
     "reserved"),
    ("leading zero size", _note_with(body=f"{ORIGIN}\n04\n{ROOT_B64}\n"), DecodeError,
     "not a decimal without leading zeros"),
    ("signed size", _note_with(body=f"{ORIGIN}\n+4\n{ROOT_B64}\n"), DecodeError,
     "not a decimal"),
    ("hex size", _note_with(body=f"{ORIGIN}\n0x4\n{ROOT_B64}\n"), DecodeError, "not a decimal"),
    ("size too large", _note_with(body=f"{ORIGIN}\n9007199254740992\n{ROOT_B64}\n"),
     DecodeError, "exceeds"),
    ("size too long", _note_with(body=f"{ORIGIN}\n{'9' * 30}\n{ROOT_B64}\n"), DecodeError,
     "not a decimal"),
    ("empty size", _note_with(body=f"{ORIGIN}\n\n{ROOT_B64}\n"), DecodeError, "not a decimal"),
    ("short root", _note_with(body=f"{ORIGIN}\n4\n{base64.b64encode(b'x' * 31).decode()}\n"),
     DecodeError, "expected 32 bytes, got 31"),
    ("unpadded root", _note_with(body=f"{ORIGIN}\n4\n{ROOT_B64.rstrip('=')}\n"), DecodeError,
     "base64"),
    ("extension line", _note_with(body=f"{BODY}extension\n"), DecodeError,
     "1 extension line"),
    ("two lines", _note_with(body=f"{ORIGIN}\n4\n"), DecodeError, "has 2 line"),
    ("space in origin", _note_with(body=f"acme example\n4\n{ROOT_B64}\n"), DecodeError,
     "contains ' '"),
    ("plus in origin", _note_with(body=f"acme+example\n4\n{ROOT_B64}\n"), DecodeError,
     "contains '\\+'"),
    ("nbsp in origin", _note_with(body=f"acme\u00a0example\n4\n{ROOT_B64}\n"), DecodeError,
     "contains"),
    ("origin too long", _note_with(body=f"{'a' * 257}\n4\n{ROOT_B64}\n"), DecodeError,
     "longer than 256 bytes"),
    ("carriage return", NOTE.replace("\n4\n", "\r\n4\n"), DecodeError,
     "control character '\\\\r'"),
    ("tab", NOTE.replace("\u2014 ", "\u2014\t"), DecodeError, "control character"),
    ("nul", NOTE + "\x00", DecodeError, "control character"),
    ("no final newline", NOTE[:-1], DecodeError, "does not end with a newline"),
    ("no blank line", BODY + SIG_LINE, DecodeError, "no blank line"),
    ("no signatures", BODY + "\n", DecodeError, "no signature lines"),
    ("hyphen instead of em dash", NOTE.replace("\u2014", "-"), DecodeError,
     "does not start with"),
    ("no space after dash", NOTE.replace("\u2014 ", "\u2014"), DecodeError,
     "does not start with"),
    ("no signature", _note_with(sig=""), DecodeError, "is 0 bytes; it needs a 4-byte key id"),
    ("extra field", _note_with(sig=LOG_SIG + " x"), DecodeError, "is not '\u2014 <name>"),
    ("double space", NOTE.replace(f"{ORIGIN} ", f"{ORIGIN}  "), DecodeError, "is not"),
    ("bad base64", _note_with(sig="!!!!"), DecodeError, "not standard base64"),
    ("short signature", _note_with(sig="AAAA"), DecodeError, "needs a 4-byte key id"),
    ("empty name", NOTE.replace(f"\u2014 {ORIGIN}", "\u2014 "), DecodeError, "key name is empty"),
    ("duplicate signer", NOTE + SIG_LINE, DecodeError, "two signatures by"),
    ("not utf-8", NOTE.encode() + b"\xff", DecodeError, "not UTF-8"),
    ("too large", b"a" * (1 << 20) + b"\n\n" + SIG_LINE.encode(), OversizeError,
     "at most 1048576"),
    ("line too long", NOTE + f"\u2014 x {'A' * 9000}\n", OversizeError, "longer than 8192"),
    ("too many signatures", NOTE + "".join(
        f"\u2014 w{i} {LOG_SIG}\n" for i in range(MAX_SIGNATURES)), OversizeError,
     "1025 signatures, at most 1024"),
]


@pytest.mark.parametrize(("case", "text", "error", "message"), MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_malformed_notes_are_refused(case: str, text: str | bytes, error: type[Exception],
                                     message: str, log: NoteVerifier) -> None:
    with pytest.raises(error, match=message):
        Checkpoint.open(text, log)


def test_the_last_blank_line_separates_the_signatures(log: NoteVerifier) -> None:
    # A blank line inside the signature block makes the earlier lines part of the body,
    # which is then no checkpoint.
    with pytest.raises(DecodeError, match="extension line"):
        Checkpoint.open(NOTE + "\n" + SIG_LINE, log)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"origin": "timeclock/x"}, "reserved"),
    ({"origin": ""}, "origin is empty"),
    ({"size": -1}, "size must be an integer"),
    ({"size": 2**53}, "size must be an integer"),
    ({"root": b"\x00" * 31}, "root must be 32 bytes"),
])
def test_checkpoint_constructor_validates(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"origin": ORIGIN, "size": 4, "root": b"\x00" * 32, **kwargs}
    with pytest.raises(DecodeError, match=message):
        Checkpoint(**args)


VKEY_REFUSALS: list[tuple[str, str, type[Exception], str]] = [
    ("two parts", "name+b56d8385", DecodeError, "is not <name>"),
    ("short id", LOG_VKEY.replace("+b56d8385+", "+b56d838+"), DecodeError, "8 hex digits"),
    ("id mismatch", LOG_VKEY.replace("b56d8385", "b56d8386"), KeyMismatchError,
     "does not match"),
    ("renamed", LOG_VKEY.replace("acme.example/timeclock", "acme.example/other"),
     KeyMismatchError, "does not match"),
    ("unknown type", "n+00000000+" + base64.b64encode(b"\x02" + b"\x00" * 32).decode(),
     DecodeError, "type 0x02 is not supported"),
    ("short key", "n+00000000+" + base64.b64encode(b"\x01" + b"\x00" * 31).decode(),
     DecodeError, "32 bytes, expected 33"),
    ("space in name", "a b+b56d8385+ASmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X", DecodeError,
     "contains ' '"),
]


@pytest.mark.parametrize(("case", "text", "error", "message"), VKEY_REFUSALS,
                         ids=[c[0] for c in VKEY_REFUSALS])
def test_vkey_refusals(case: str, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        NoteVerifier.from_vkey(text)


def test_duplicate_signature_cannot_be_added(log_key: SigningKey) -> None:
    note = Note.from_text(NOTE)
    with pytest.raises(DecodeError, match="already has a signature"):
        note.with_signature(sign_note(BODY, log_key, ORIGIN))
