"""Proofs served (DESIGN.md §8.1–8.2): every punch proof from the API verifies with
wire.merkle against the v2 checkpoint note it comes with, consistency proofs between
checkpoints verify, a flipped bit fails, requests outside the ledger are clear 4xx problems,
and the CLI prints the same documents. Roles: see also the matrix of test_api_rbac."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint_v2
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from collector.records import proofs
from tests.collector.api_kit import Api
from tests.collector.ledger_kit import T0, Clock
from wire.errors import ProofError
from wire.keys import SigningKey
from wire.ledger import Entry
from wire.merkle import ConsistencyProof, InclusionProof, entry_leaf_hash
from wire.note import Checkpoint, NoteVerifier

ORIGIN = "acme.example/timeclock"
LOG_KEY = SigningKey(bytes(range(32)))
LOG = NoteVerifier(ORIGIN, LOG_KEY.verify_key)


def checkpoint(store: SQLStore) -> int:
    size, _ = store.head()
    make_checkpoint_v2(store, LOG_KEY, ORIGIN, size, T0)
    return size


def verify_punch_proof(doc: dict[str, Any]) -> Checkpoint:
    """What a holder of the proof does: open the note under the log key, hash the entry into
    its leaf, and fold the inclusion proof into the note's root."""
    cp = Checkpoint.open(doc["checkpoint"], LOG)
    entry = Entry.from_dict(doc["entry"]["entry"])
    assert entry.hash() == doc["entry"]["hash"]
    proof = InclusionProof.from_dict(doc["inclusion_proof"])
    assert (proof.leaf_index, proof.tree_size) == (doc["leaf_index"], cp.size)
    assert entry.idx == doc["leaf_index"]
    proof.verify(entry_leaf_hash(entry), cp.root)
    return cp


def flipped(doc: dict[str, Any], i: int, bit: int) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(doc["inclusion_proof"]["inclusion_path"][i]))
    raw[bit // 8] ^= 1 << (bit % 8)
    path = list(doc["inclusion_proof"]["inclusion_path"])
    path[i] = base64.b64encode(bytes(raw)).decode()
    return {**doc, "inclusion_proof": {**doc["inclusion_proof"], "inclusion_path": path}}


async def test_every_punch_proof_verifies_and_a_flipped_bit_fails(api: Api) -> None:
    size = checkpoint(api.store)
    seen = 0
    for c in api.clocks:
        for seq in range(1, c.seq + 1):
            for who in ("hr-reader", "auditor"):
                resp = await api.call("GET", f"/v1/punches/{c.device}/{seq}/proof", who)
                assert resp.status == 200, await resp.text()
                doc = await resp.json()
                assert set(doc) == {"entry", "punch_hash", "leaf_index", "inclusion_proof",
                                    "checkpoint"}
                assert verify_punch_proof(doc).size == size
                seen += 1
            for i in range(len(doc["inclusion_proof"]["inclusion_path"])):
                for bit in (0, 255):
                    with pytest.raises(ProofError):
                        verify_punch_proof(flipped(doc, i, bit))
    assert seen == 2 * 2 * 5


async def test_a_punch_proof_carries_the_newest_note_with_its_cosignatures(api: Api) -> None:
    checkpoint(api.store)
    extra = Clock("clock-late")
    api.store.append([EventFact("device", extra.enrolled_body()), extra.fact()], now_us=T0 + 2)
    resp = await api.call("GET", f"/v1/punches/{extra.device}/1/proof", "hr-reader")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 404
    assert "not covered by a checkpoint yet" in problem["detail"]
    size = checkpoint(api.store)
    witness = SigningKey(bytes(range(2, 34)))
    w = NoteVerifier("witness.example", witness.verify_key, 0x04)
    stored = checkpoint_tables.get(api.store, size)
    assert stored is not None
    line = stored.checkpoint.cosign(witness, w.name, timestamp=1_764_140_500).line()
    checkpoint_tables.add_cosignature(api.store, size, line, w.name, w.key_id, T0 + 3)
    for path in (f"/v1/punches/{extra.device}/1/proof", "/v1/punches/clock-00/1/proof"):
        doc = await (await api.call("GET", path, "auditor")).json()
        cp = verify_punch_proof(doc)
        assert cp.size == size          # the newest checkpoint, also for an older punch
        assert cp.verify_cosignature(doc["checkpoint"], w) == 1_764_140_500
    resp = await api.call("GET", "/v1/log/checkpoint", "payroll")
    assert (await resp.json())["note"] == doc["checkpoint"]


async def test_consistency_between_checkpoints_verifies(api: Api) -> None:
    sizes = [checkpoint(api.store)]
    c = Clock("clock-more")
    api.store.append([EventFact("device", c.enrolled_body())], now_us=T0 + 2)
    for n in (1, 3, 8):
        api.store.append([c.fact() for _ in range(n)], now_us=T0 + 3)
        sizes.append(checkpoint(api.store))
    roots = {s: checkpoint_tables.get(api.store, s).checkpoint.root  # type: ignore[union-attr]
             for s in sizes}
    for i, old in enumerate(sizes):
        for new in sizes[i:]:
            resp = await api.call("GET", f"/v1/log/consistency?from={old}&to={new}", "auditor")
            assert resp.status == 200, await resp.text()
            proof = ConsistencyProof.from_dict(await resp.json())
            assert (proof.tree_size_1, proof.tree_size_2) == (old, new)
            proof.verify(roots[old], roots[new])
            if proof.consistency_path:
                with pytest.raises(ProofError):
                    proof.verify(roots[old], bytes(32))
    # ``to`` defaults to the newest checkpoint
    doc = await (await api.call("GET", f"/v1/log/consistency?from={sizes[0]}", "auditor")).json()
    assert doc["tree_size_2"] == sizes[-1]
    ConsistencyProof.from_dict(doc).verify(roots[sizes[0]], roots[sizes[-1]])


@pytest.mark.parametrize(("query", "status", "detail"), [
    ("?from=5&to=3", 400, "need 0 ≤ from ≤ to"),
    ("?from=1&to=999999", 400, "beyond this ledger's"),
    ("?to=3", 400, "from: required"),
    ("?from=x", 400, "not an integer"),
    ("?from=1&size=2", 400, "unknown query parameter"),
], ids=["reversed", "beyond", "no-from", "not-integer", "unknown-param"])
async def test_consistency_refuses_bad_sizes(api: Api, query: str, status: int,
                                             detail: str) -> None:
    checkpoint(api.store)
    resp = await api.call("GET", f"/v1/log/consistency{query}", "auditor")
    problem = await resp.json(content_type="application/problem+json")
    assert (resp.status, detail in problem["detail"]) == (status, True), problem


async def test_proof_routes_before_any_checkpoint_and_for_unknown_punches(api: Api) -> None:
    for path, who in (("/v1/log/checkpoint", "hr-reader"),
                      ("/v1/log/consistency?from=0", "auditor"),
                      ("/v1/punches/clock-00/1/proof", "hr-reader")):
        resp = await api.call("GET", path, who)
        problem = await resp.json(content_type="application/problem+json")
        assert resp.status == 404, problem
        assert "checkpoint" in problem["detail"]
    checkpoint(api.store)
    resp = await api.call("GET", "/v1/punches/clock-00/99/proof", "hr-reader")
    assert resp.status == 404
    assert "no recorded punch clock-00#99" in (await resp.json(
        content_type="application/problem+json"))["detail"]


async def test_proof_roles(api: Api) -> None:
    checkpoint(api.store)
    expect = {"/v1/punches/clock-00/1/proof": {"hr-reader", "editor", "approver", "auditor"},
              "/v1/log/consistency?from=1": {"auditor"},
              "/v1/log/checkpoint": {"hr-reader", "editor", "approver", "auditor", "payroll"}}
    for path, allowed in expect.items():
        for who in ("hr-reader", "payroll", "editor", "editor2", "approver", "auditor", "ops",
                    "admin"):
            resp = await api.call("GET", path, who)
            assert (resp.status == 200) == (who in allowed), (path, who, resp.status)
            if who not in allowed:
                assert resp.status == 403


def test_cli_proofs_are_the_api_documents(sqlite_store: SQLStore, tmp_path: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint_tables.ensure_schema(sqlite_store)
    c = Clock("clock-cli")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    sqlite_store.append([c.fact() for _ in range(6)], now_us=T0 + 1)
    first = checkpoint(sqlite_store)
    sqlite_store.append([c.fact() for _ in range(3)], now_us=T0 + 2)
    newest = checkpoint(sqlite_store)
    url = f"sqlite://{sqlite_store.path}"
    assert main(["proof", "punch", "clock-cli", "4", "--store", url]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == proofs.punch_proof(sqlite_store, "clock-cli", 4)
    assert verify_punch_proof(doc).size == newest
    assert main(["proof", "consistency", "--from", str(first), "--store", url]) == 0
    proof = ConsistencyProof.from_dict(json.loads(capsys.readouterr().out))
    assert (proof.tree_size_1, proof.tree_size_2) == (first, newest)
    proof.verify(sqlite_store.merkle_root(first), sqlite_store.merkle_root(newest))
    assert main(["proof", "consistency", "--from", "9", "--to", "3", "--store", url]) == 2
    assert "need 0 ≤ from ≤ to" in capsys.readouterr().err
    assert main(["proof", "punch", "clock-cli", "77", "--store", url]) == 2
    assert "no recorded punch clock-cli#77" in capsys.readouterr().err


def test_inclusion_proofs_for_a_set_of_entries_lead_to_one_checkpoint(
        store: SQLStore) -> None:
    """What a payroll export with proofs uses (wire.export_proofs): many leaves, one root."""
    checkpoint_tables.ensure_schema(store)
    c = Clock("clock-pay")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(20)], now_us=T0 + 1)
    size = checkpoint(store)
    cp = checkpoint_tables.get(store, size)
    assert cp is not None
    got = checkpoint_tables.inclusion_proofs(store, [3, 1, 20, 3], size)
    assert sorted(got) == [1, 3, 20]
    for idx, proof in got.items():
        se = next(store.entries(idx, idx + 1))
        proof.verify(entry_leaf_hash(se.entry), cp.checkpoint.root)
    with pytest.raises(Exception, match="not in the checkpoint of size 21"):
        checkpoint_tables.inclusion_proofs(store, [21], size)
    with pytest.raises(Exception, match="no checkpoint of size 5"):
        checkpoint_tables.inclusion_proofs(store, [1], 5)


async def test_payroll_export_with_proofs_verifies_alone(api: Api, tmp_path: Any,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """GET /v1/exports/payroll?format=ndjson&proofs=1 streams collector.records.payroll_proofs
    (several chunks here), and timeclock-verify --export accepts it without the bundle."""
    from wire import verify_cli  # noqa: PLC0415 - the verifier, only here
    from wire.note import COSIGNATURE_V1  # noqa: PLC0415

    resp = await api.call("GET", "/v1/exports/payroll?format=ndjson&proofs=1", "payroll")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 400
    assert "no v2 checkpoint" in problem["detail"]
    more = Clock("clock-many")
    api.store.append([EventFact("device", more.enrolled_body())], now_us=T0 + 2)
    api.store.append([more.fact() for _ in range(400)], now_us=T0 + 3)
    size = checkpoint(api.store)
    witness = SigningKey(bytes(range(3, 35)))
    w = NoteVerifier("witness.hr.example", witness.verify_key, COSIGNATURE_V1)
    cp = checkpoint_tables.get(api.store, size).checkpoint  # type: ignore[union-attr]
    checkpoint_tables.add_cosignature(api.store, size, cp.cosign(
        witness, w.name, timestamp=1_764_140_500).line(), w.name, w.key_id, T0 + 4)
    resp = await api.call("GET", "/v1/exports/payroll?format=ndjson&proofs=1", "payroll")
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    assert len(body) > 3 * (1 << 16)                 # more than one chunk of the producer
    lines = body.decode().splitlines()
    assert len(lines) == 2 + 410
    path = tmp_path / "payroll.ndjson"
    path.write_bytes(body)
    capsys.readouterr()
    assert verify_cli.main(["--export", str(path), "--collector-key", LOG_KEY.verify_key.b64,
                            "--origin", ORIGIN, "--witness", w.vkey(), "--quorum", "1"]) == 0, \
        capsys.readouterr().out
    # CSV carries no proofs; the role is payroll.export's
    resp = await api.call("GET", "/v1/exports/payroll?format=csv&proofs=1", "payroll")
    assert resp.status == 400
    resp = await api.call("GET", "/v1/exports/payroll?format=ndjson&proofs=1", "auditor")
    assert resp.status == 403


async def test_a_punch_proof_to_the_newest_cosigned_checkpoint_or_to_a_size(api: Api) -> None:
    first = checkpoint(api.store)
    witness = SigningKey(bytes(range(4, 36)))
    w = NoteVerifier("witness.example", witness.verify_key, 0x04)
    cp1 = checkpoint_tables.get(api.store, first).checkpoint  # type: ignore[union-attr]
    checkpoint_tables.add_cosignature(api.store, first, cp1.cosign(
        witness, w.name, timestamp=1).line(), w.name, w.key_id, T0)
    c = Clock("clock-later")
    api.store.append([EventFact("device", c.enrolled_body()), c.fact()], now_us=T0 + 2)
    second = checkpoint(api.store)                    # newest, not cosigned yet
    path = "/v1/punches/clock-00/1/proof"
    doc = await (await api.call("GET", path, "hr-reader")).json()
    assert verify_punch_proof(doc).size == first      # the newest that carries a cosignature
    assert cp1.verify_cosignature(doc["checkpoint"], w) == 1
    doc = await (await api.call("GET", f"{path}?size={second}", "hr-reader")).json()
    assert verify_punch_proof(doc).size == second     # the one the caller holds
    # a punch only the uncosigned newest covers is proven to it
    doc = await (await api.call("GET", f"/v1/punches/{c.device}/1/proof", "auditor")).json()
    assert verify_punch_proof(doc).size == second
    for query, status, detail in ((f"?size={second + 5}", 404, "no checkpoint of size"),
                                  ("?size=1", 404, "no checkpoint of size 1"),
                                  ("?size=0", 400, "outside")):
        resp = await api.call("GET", path + query, "hr-reader")
        problem = await resp.json(content_type="application/problem+json")
        assert (resp.status, detail in problem["detail"]) == (status, True), problem
    small = checkpoint_tables.newest(api.store, at_most=2)
    assert small is None
    make_checkpoint_v2(api.store, LOG_KEY, ORIGIN, 2, T0)
    resp = await api.call("GET", f"/v1/punches/{c.device}/1/proof?size=2", "hr-reader")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 400
    assert "does not include punch" in problem["detail"]


async def test_proofs_through_a_reader_connection_see_every_commit(sqlite_store: SQLStore
                                                                  ) -> None:
    """serve gives the API a second connection for proof reads (make_app(reader=)): what
    the ledger's writers committed is what the reader proves."""
    from aiohttp.test_utils import TestClient, TestServer  # noqa: PLC0415 - this test only

    from collector.api import make_app  # noqa: PLC0415
    from collector.ledger.sqlite import SQLiteStore  # noqa: PLC0415
    from tests.collector.api_kit import issue_tokens  # noqa: PLC0415
    from wire.clock import now_us  # noqa: PLC0415

    reader = SQLiteStore(sqlite_store.path)  # type: ignore[attr-defined]
    app = make_app(sqlite_store, reader=reader)
    tokens = issue_tokens(sqlite_store, now_us(), {"auditor": ("audit.read",)})
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        h = {"Authorization": f"Bearer {tokens['auditor']}"}
        c = Clock("clock-r")
        sqlite_store.append([EventFact("device", c.enrolled_body()), c.fact(), c.fact()],
                            now_us=T0)
        for _ in range(3):
            size = checkpoint(sqlite_store)
            resp = await client.get(f"/v1/punches/{c.device}/2/proof", headers=h)
            doc = await resp.json(content_type=None)
            assert resp.status == 200, doc
            assert verify_punch_proof(doc).size == size
            old = await (await client.get(f"/v1/log/consistency?from=1&to={size}",
                                          headers=h)).json()
            ConsistencyProof.from_dict(old).verify(sqlite_store.merkle_root(1),
                                                   sqlite_store.merkle_root(size))
            sqlite_store.append([c.fact()], now_us=T0 + size)
    finally:
        await client.close()
        reader.close()
