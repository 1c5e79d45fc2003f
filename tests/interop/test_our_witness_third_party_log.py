"""Our ``timeclock-witness`` (witness/) with a third-party C2SP log: ``aics-tlog`` from PyPI
(tests/interop/aics_kit.py, unmodified wheels) builds the log — its own Ed25519 note key and
origin, tiles, checkpoints and signatures, consistency proofs from its tiles — and submits to
our witness over HTTPS with ``aics_witness.feeder.WitnessClient``, the client a log uses to get
cosigned. The client verifies our cosignature line itself (the interop check) and
``aics_tlog.verify_checkpoint`` / ``verify_cosignature`` accept it on the merged note; the
refusals the log sees are the statuses of c2sp.org/tlog-witness, mapped by that client to its
documented errors. The other direction (our collector with a third-party witness) is
test_third_party_witness.py; docs/protocol.md §13.7 and §13.10."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.pki import TestPKI
from tests.interop.aics_kit import REPO, AicsLog, import_aics, unpack
from tests.witness.witness_kit import WitnessServer

pytestmark = [pytest.mark.subprocess]

ORIGIN = "interop.example/aics-log"


@pytest.fixture(scope="module")
def aics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = unpack(tmp_path_factory.mktemp("aics"))
    import_aics(site)
    return site


@pytest.fixture
def log_(aics: Path) -> AicsLog:
    return AicsLog(ORIGIN).append(5)


@pytest.fixture
def witness(tmp_path: Path, pki: TestPKI, log_: AicsLog) -> Iterator[WitnessServer]:
    # (2) our witness trusts the log's vkey exactly as aics_tlog formats it
    srv = WitnessServer(tmp_path / "witness", pki, [log_])  # type: ignore[list-item]
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def our_vkey(srv: WitnessServer) -> str:
    """The vkey ``timeclock-witness vkey`` prints: what the witness operator hands the log."""
    r = subprocess.run([sys.executable, "-m", "witness", "vkey", "--config", str(srv.config)],
                       capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def client(srv: WitnessServer, pki: TestPKI, tmp_path: Path) -> Any:
    from aics_witness.feeder import WitnessClient  # noqa: PLC0415 - importable after unpack

    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    return WitnessClient(srv.url, our_vkey(srv), ssl_context=ctx, backoff=0.05,
                         state_path=tmp_path / "aics-client.state.json")


def cosigned_by_us(note: bytes, log_: AicsLog, vkey: str) -> None:
    """(3) aics_tlog's own verification accepts our cosignature on the merged note."""
    from aics_tlog import (  # noqa: PLC0415
        parse_checkpoint,
        parse_note,
        parse_vkey,
        verify_checkpoint,
        verify_cosignature,
    )

    parsed = parse_note(note)
    wkey = parse_vkey(vkey)
    result = verify_checkpoint(parsed, parse_vkey(log_.vkey()), [wkey], quorum=1,
                               expected_origin=ORIGIN, max_age_seconds=600)
    assert (result.ok, result.error, result.witnesses) == (True, None, [wkey.name])
    cp = parse_checkpoint(parsed.text)
    [line] = [s for s in parsed.signatures if (s.name, s.key_id) == (wkey.name, wkey.key_id)]
    assert verify_cosignature(line.signature, wkey.name, wkey.public_key, cp.origin, cp.size,
                              cp.root, cp.extension_lines)
    # and not on another checkpoint: the cosignature is bound to this size and root
    assert not verify_cosignature(line.signature, wkey.name, wkey.public_key, cp.origin,
                                  cp.size + 1, cp.root, cp.extension_lines)


def test_d5_a_third_party_log_gets_our_cosignatures_from_its_own_client(
        witness: WitnessServer, log_: AicsLog, pki: TestPKI, tmp_path: Path) -> None:
    from aics_witness.feeder import merge_cosignatures  # noqa: PLC0415

    vkey = our_vkey(witness)
    with client(witness, pki, tmp_path) as c:
        # (3) a first checkpoint (old 0), then larger ones with proofs from the log's tiles
        for grow in (0, 4, 1, 23):
            log_.append(grow)
            note = log_.signed_note()
            lines = c.submit(note, log_.consistency_proof)   # verifies our line itself
            merged = merge_cosignatures(note, lines)
            cosigned_by_us(merged, log_, vkey)
            assert witness.size_held(ORIGIN) == log_.size == c.max_cosigned(ORIGIN)
    # A restarted log client (its state file) and a restarted witness carry on from size 33.
    witness.stop()
    witness.start()
    log_.append(2)
    with client(witness, pki, tmp_path) as c:
        note = log_.signed_note()
        cosigned_by_us(merge_cosignatures(note, c.submit(note, log_.consistency_proof)),
                       log_, vkey)
    assert witness.size_held(ORIGIN) == 35


def test_d5_a_third_party_log_that_forgot_our_size_learns_it_from_our_409(
        witness: WitnessServer, log_: AicsLog, pki: TestPKI, tmp_path: Path) -> None:
    with client(witness, pki, tmp_path) as c:
        c.submit(log_.signed_note(), log_.consistency_proof)
    (tmp_path / "aics-client.state.json").unlink()      # the log lost its view of us
    log_.append(7)
    with client(witness, pki, tmp_path) as c:
        note = log_.signed_note()
        c.submit(note, log_.consistency_proof)           # old 0 → 409 "5" → proof from 5
        assert c.known_sizes[ORIGIN] == 12
    assert witness.size_held(ORIGIN) == 12


@pytest.mark.parametrize("case", ["smaller", "same-size-fork", "larger-fork", "other-key",
                                  "unknown-origin"])
def test_d5_our_refusals_are_the_third_party_clients_documented_errors(
        witness: WitnessServer, log_: AicsLog, pki: TestPKI, tmp_path: Path,
        case: str) -> None:
    """(4) Each refusal as the log's own client sees it: the spec status, the client's error
    class, and nothing changed in the witness (the honest log is still cosigned after)."""
    from aics_witness.feeder import WitnessAhead, WitnessRejected  # noqa: PLC0415

    with client(witness, pki, tmp_path) as c:
        old_note = log_.signed_note()                    # size 5, kept by the log
        c.submit(old_note, log_.consistency_proof)
        log_.append(6)
        c.submit(log_.signed_note(), log_.consistency_proof)
        assert witness.size_held(ORIGIN) == 11
        if case == "smaller":
            # 409 text/x.tlog.size "11": the witness is ahead of this checkpoint
            with pytest.raises(WitnessAhead, match="already cosigned size 11") as ahead:
                c.submit(old_note, log_.consistency_proof)
            assert ahead.value.known_size == 11
        elif case == "same-size-fork":
            # the log key signed another root for size 11: C2SP's 409 at the size sent
            fork = log_.forked(8, 3)
            assert fork.size == 11
            with pytest.raises(WitnessRejected, match="different root") as rej:
                c.submit(fork.signed_note(), fork.consistency_proof)
            assert rej.value.status == 409
        elif case == "larger-fork":
            # a rewritten history under the same key: no proof from 11 leads to it (422)
            fork = log_.forked(8, 9)
            with pytest.raises(WitnessRejected, match="answered 422") as rej:
                c.submit(fork.signed_note(), fork.consistency_proof)
            assert rej.value.status == 422
        elif case == "other-key":
            # the same origin signed by a key the witness does not trust (403)
            impostor = AicsLog(ORIGIN).append(12)
            with pytest.raises(WitnessRejected, match="answered 403") as rej:
                c.submit(impostor.signed_note(), impostor.consistency_proof, old_size=0)
            assert rej.value.status == 403
        else:
            # a log the witness was not configured for (404)
            stranger = AicsLog("interop.example/stranger").append(3)
            with pytest.raises(WitnessRejected, match="answered 404") as rej:
                c.submit(stranger.signed_note(), stranger.consistency_proof)
            assert rej.value.status == 404
        assert witness.size_held(ORIGIN) == 11
        log_.append(1)
        c.submit(log_.signed_note(), log_.consistency_proof)
    assert witness.size_held(ORIGIN) == 12


def test_d5_a_malformed_or_backwards_request_from_the_third_party_format_is_400(
        witness: WitnessServer, log_: AicsLog, pki: TestPKI) -> None:
    """aics_witness's own request formatter: old size above the checkpoint's (the client
    itself refuses to send that, so it goes out directly) and an old size with a leading zero
    are 400, and nothing is recorded."""
    from aics_witness.protocol import format_add_checkpoint_request  # noqa: PLC0415

    note = log_.signed_note()
    bodies = {"old-above-size": format_add_checkpoint_request(9, [], note),
              "leading-zero": b"old 05" + format_add_checkpoint_request(5, [], note)[5:]}
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    for name, body in bodies.items():
        conn = http.client.HTTPSConnection("127.0.0.1", witness.port, timeout=30, context=ctx)
        try:
            conn.request("POST", "/add-checkpoint", body=body,
                         headers={"Content-Type": "text/plain; charset=utf-8"})
            resp = conn.getresponse()
            assert (name, resp.status) == (name, 400), resp.read()
        finally:
            conn.close()
    assert witness.size_held(ORIGIN) == 0
