"""Interoperability with a third-party C2SP / RFC 9162 implementation: the Go module mirror's
own ``golang.org/x/mod/sumdb/note`` (signed notes) and ``golang.org/x/mod/sumdb/tlog`` (tree
hashing, inclusion and consistency proofs), from Debian's ``golang-golang-x-mod-dev`` and
``golang-go`` (scripts/bootstrap.sh installs both). ``tests/interop/c2sp/main.go`` is a small
driver built here; it recomputes the tree from our leaf data alone, opens our checkpoint notes
(cosignature lines included) with the log key's vkey, checks our proofs with tlog's verifier
and compares them with the proofs tlog makes itself. The other way round, a note that x/mod
signs opens with wire.note. (DESIGN.md §8.1–8.3; docs/protocol.md §13.)"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.ingest.checkpoints import make_checkpoint_v2, note_verifier
from collector.ledger import checkpoint_tables, open_store
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock
from wire import merkle
from wire.keys import SigningKey
from wire.note import Checkpoint, NoteVerifier

pytestmark = pytest.mark.subprocess      # go build, and the driver

GOPATH = Path("/usr/share/gocode")      # Debian's Go library sources
DRIVER = Path(__file__).parent / "c2sp" / "main.go"
ORIGIN = "interop.example/timeclock"
SIZE = 64
WITNESS = "interop.example/witness"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    have_mod = (GOPATH / "src/golang.org/x/mod/sumdb/tlog/tlog.go").is_file()
    missing = "missing: run scripts/bootstrap.sh (it installs Debian's golang-go and " \
              "golang-golang-x-mod-dev)"
    assert go is not None, f"the Go toolchain is {missing}"
    assert have_mod, f"golang.org/x/mod is {missing}"
    out = tmp_path_factory.mktemp("c2sp") / "c2sp"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH),
           "GOCACHE": str(out.parent / "cache"), "GOFLAGS": "", "CGO_ENABLED": "0"}
    r = subprocess.run([go, "build", "-o", str(out), str(DRIVER)], env=env, cwd=DRIVER.parent,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    return out


def run(driver: Path, *args: str, stdin: str) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([str(driver), *args], input=stdin, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[SQLStore, SigningKey]]:
    """A store of SIZE entries appended in batches of varied sizes, with v2 checkpoints at
    several sizes, one of them cosigned by a witness."""
    store = open_store(str(tmp_path / "ledger.db"))
    checkpoint_tables.ensure_schema(store)
    key = SigningKey.generate()
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    k = 1
    for n in (1, 2, 3, 5, 8, 13, 21, 10):
        store.append([c.fact() for _ in range(n)], now_us=T0 + k)
        k += 1
        make_checkpoint_v2(store, key, ORIGIN, store.tree_size(), T0 + k)
    assert store.tree_size() == SIZE
    witness = SigningKey.generate()
    cp = Checkpoint(ORIGIN, SIZE, store.merkle_root(SIZE))
    line = cp.cosign(witness, WITNESS, timestamp=1_767_225_600).line()
    checkpoint_tables.add_cosignature(store, SIZE, line, WITNESS,
                                      NoteVerifier(WITNESS, witness.verify_key,
                                                   0x04).key_id, T0 + 99)
    try:
        yield store, key
    finally:
        store.close()


def request(store: SQLStore, key: SigningKey) -> dict[str, Any]:
    entries = [se.entry for se in store.entries()]
    return {
        "vkey": note_verifier(ORIGIN, key).vkey(),
        "notes": [c.note for c in checkpoint_tables.all_checkpoints(store)],
        "leaves": [b64(merkle.entry_leaf_data(e)) for e in entries],
        "inclusion": [{"index": i, "size": n,
                       "proof": [b64(h) for h in store.inclusion_proof(i, n)]}
                      for n in range(1, SIZE + 1) for i in range(n)],
        "consistency": [{"old": m, "new": n,
                         "proof": [b64(h) for h in store.consistency_proof(m, n)]}
                        for n in range(1, SIZE + 1) for m in range(1, n + 1)],
    }


def test_d5_go_x_mod_checks_our_notes_roots_and_every_proof_up_to_64(
        driver: Path, ledger: tuple[SQLStore, SigningKey]) -> None:
    store, key = ledger
    req = request(store, key)
    assert any(n.count("\n— ") == 2 for n in req["notes"])      # one note carries a cosignature
    rc, rep = run(driver, "check", stdin=json.dumps(req))
    assert rep["errors"] == []
    assert rc == 0
    assert rep["notes"] == len(req["notes"]) == 8
    assert rep["inclusion"] == SIZE * (SIZE + 1) // 2
    assert rep["consistency"] == SIZE * (SIZE + 1) // 2
    # Every size 1…64. The empty tree is the one place where the two differ, by definition:
    # x/mod's tlog gives size 0 the zero hash, RFC 9162 §2.1.1 (and DESIGN.md §8.1) SHA-256("").
    assert rep["roots"][1:] == [b64(store.merkle_root(n)) for n in range(1, SIZE + 1)]
    assert (rep["roots"][0], b64(store.merkle_root(0))) == (b64(bytes(32)),
                                                             b64(merkle.EMPTY_ROOT))


def _flip(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return b64(bytes(raw))


def test_d5_go_x_mod_refuses_a_flipped_bit_in_a_proof_or_a_note(
        driver: Path, ledger: tuple[SQLStore, SigningKey]) -> None:
    store, key = ledger
    req = request(store, key)
    incl = next(p for p in req["inclusion"] if p["index"] == 5 and p["size"] == 40)
    incl["proof"][1] = _flip(incl["proof"][1])
    cons = next(p for p in req["consistency"] if p["old"] == 7 and p["new"] == 50)
    cons["proof"][0] = _flip(cons["proof"][0])
    head, sig_line = req["notes"][0].rsplit("— ", 1)
    name, sig = sig_line.rstrip("\n").split(" ")
    req["notes"][0] = f"{head}— {name} {_flip(sig)}\n"
    rc, rep = run(driver, "check", stdin=json.dumps(req))
    assert rc == 1
    errors = rep["errors"]
    assert len(errors) == 3, errors
    assert errors[0].startswith("note 0: ")
    assert errors[1].startswith("inclusion 5 in 40: ")
    assert errors[2].startswith("consistency 7 to 50: ")


def test_d5_a_note_signed_by_go_x_mod_opens_with_wire_note(driver: Path) -> None:
    body = Checkpoint(ORIGIN, 3, bytes(range(32))).body_text()
    rc, out = run(driver, "sign", ORIGIN, stdin=body)
    assert rc == 0
    verifier = NoteVerifier.from_vkey(out["vkey"])
    cp = Checkpoint.open(out["note"], verifier)
    assert (cp.origin, cp.size, cp.root) == (ORIGIN, 3, bytes(range(32)))
    forged = out["note"].replace("\n3\n", "\n4\n")
    with pytest.raises(Exception, match="signature"):
        Checkpoint.open(forged, verifier)
