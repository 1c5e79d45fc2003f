"""``timeclock-witness`` (witness/): the C2SP tlog-witness protocol against the real server,
over HTTPS on loopback: cosign, persist across restarts, and refuse a log that shrank or was
rewritten, with the status codes of the spec."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pki import TestPKI
from tests.witness.witness_kit import ORIGIN, Log, WitnessServer
from wire.keys import SigningKey
from wire.note import NoteSignature
from wire.witness import AddCheckpoint

pytestmark = [pytest.mark.subprocess]


@pytest.fixture
def log_() -> Log:
    return Log(SigningKey.generate()).grow(10)


@pytest.fixture
def server(tmp_path: Path, pki: TestPKI, log_: Log) -> Iterator[WitnessServer]:
    srv = WitnessServer(tmp_path / "witness", pki, [log_])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def cosignature(srv: WitnessServer, log_: Log, answer_body: str) -> int:
    """Verify the one cosignature line of a 200 answer; return its timestamp."""
    assert answer_body.endswith("\n")
    [line] = answer_body[:-1].split("\n")
    cp = log_.checkpoint()
    note = cp.signed_note(log_.key).with_signature(NoteSignature.from_line(line))
    return cp.verify_cosignature(note, srv.verifier)


def test_d5_cosigns_consistent_checkpoints_and_remembers_across_a_restart(
        server: WitnessServer, log_: Log) -> None:
    a = server.post(log_.request(0))
    assert (a.status, a.content_type.split(";")[0]) == (200, "text/plain")
    cosignature(server, log_, a.body)
    log_.grow(7)
    a = server.post(log_.request(10))
    assert a.status == 200, a.body
    cosignature(server, log_, a.body)
    server.stop()
    server.start()
    # It remembers size 17: a request from any other size is a conflict naming 17.
    a = server.post(log_.request(0))
    assert (a.status, a.body, a.content_type) == (409, "17\n", "text/x.tlog.size")
    log_.grow(1)
    assert server.post(log_.request(17)).status == 200


def test_d5_the_same_checkpoint_again_is_cosigned_again(server: WitnessServer, log_: Log) -> None:
    assert server.post(log_.request(0)).status == 200
    assert server.post(log_.request(10)).status == 200


def test_d5_truncation_and_rewrite_are_refused(server: WitnessServer, log_: Log) -> None:
    assert server.post(log_.request(0)).status == 200       # the witness holds size 10
    # Truncated to 6: old 10 > size 6 is a bad request; from any other old size, a conflict.
    short = log_.truncated(6, 0)
    assert server.post(AddCheckpoint(10, (), short.checkpoint().sign(log_.key)).to_bytes()
                       ).status == 400
    a = server.post(short.request(0))
    assert (a.status, a.body) == (409, "10\n")
    # Truncated to 6 and regrown to 15: no proof from size 10 leads to the new root.
    fake = log_.truncated(6, 9)
    a = server.post(fake.request(10))
    assert a.status == 422, a.body
    # Same size, other root: C2SP's 409 Conflict (naming the size held, which is the one sent).
    same = log_.truncated(6, 4)
    a = server.post(AddCheckpoint(10, (), same.checkpoint().sign(log_.key)).to_bytes())
    assert (a.status, a.body, a.content_type) == (409, "10\n", "text/x.tlog.size")
    # The honest log still works: the witness kept size 10.
    log_.grow(2)
    assert server.post(log_.request(10)).status == 200


@pytest.mark.parametrize(("case", "status"), [
    ("unknown-origin", 404), ("bad-signature", 403), ("malformed", 400),
    ("too-large", 413), ("bad-proof", 422),
])
def test_d5_refusals_name_the_status_of_the_spec(server: WitnessServer, log_: Log, case: str,
                                              status: int) -> None:
    if case == "unknown-origin":
        body = Log(log_.key, "other.example/log").grow(3).request(0)
    elif case == "bad-signature":
        body = log_.request(0, key=SigningKey.generate())
    elif case == "malformed":
        body = b"old 0\n\nnot a checkpoint\n"
    elif case == "too-large":
        body = b"old 0\n\n" + b"x" * (70 * 1024)
    else:
        assert server.post(log_.request(0)).status == 200
        log_.grow(5)
        good = AddCheckpoint.from_bytes(log_.request(10))
        body = AddCheckpoint(10, (good.proof[0], *good.proof[1:-1], bytes(32)),
                             good.note).to_bytes()
    a = server.post(body)
    assert a.status == status, a.body


def test_d5_unknown_paths_are_404(server: WitnessServer, log_: Log) -> None:
    assert server.post(log_.request(0), path="/nope").status == 404


def test_d5_keygen_and_vkey(tmp_path: Path, server: WitnessServer) -> None:
    r = subprocess.run([sys.executable, "-m", "witness", "vkey", "--config",
                        str(server.config)], capture_output=True, text=True, check=False,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert (r.returncode, r.stdout.strip()) == (0, server.verifier.vkey())
    r = subprocess.run([sys.executable, "-m", "witness", "keygen", "--key",
                        str(tmp_path / "k.key"), "--name", "bad name"], capture_output=True,
                       text=True, check=False, cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 2
    assert "timeclock-witness: error: witness name" in r.stderr
    assert not (tmp_path / "k.key").exists()
    r = subprocess.run([sys.executable, "-m", "witness", "keygen", "--key",
                        str(tmp_path / "k.key"), "--name", "auditor.example/w2"],
                       capture_output=True, text=True, check=False,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("auditor.example/w2+")
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


def test_d5_a_config_with_problems_lists_them_all(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text('[witness]\nname = "w"\nport = 0\nextra = 1\n[[logs]]\norigin = "x/y"\n')
    r = subprocess.run([sys.executable, "-m", "witness", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, check=False,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 2
    for key in ("witness.key", "witness.state_dir", "witness.port", "witness.extra",
                "logs[0].key"):
        assert key in r.stderr, r.stderr
    assert ORIGIN not in r.stderr


_BARE = """\
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "aiohttp":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
from witness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_d5_without_aiohttp_serve_names_the_extra_and_keygen_works(
        tmp_path: Path, server: WitnessServer) -> None:
    root = str(Path(__file__).resolve().parents[2])
    r = subprocess.run([sys.executable, "-c", _BARE, "serve", "--config", str(server.config)],
                       capture_output=True, text=True, check=False, cwd=root)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("timeclock-witness: this command needs the 'witness' extra: pip install "
                        "'timeclock[witness]' (no module named 'aiohttp')\n")
    r = subprocess.run([sys.executable, "-c", _BARE, "keygen", "--key", str(tmp_path / "k"),
                        "--name", "w.example/w"], capture_output=True, text=True, check=False,
                       cwd=root)
    assert r.returncode == 0, r.stderr
