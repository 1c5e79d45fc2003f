"""Acceptance of ``timeclock-verify`` version 2 (issue 10, DESIGN.md §8.2–8.3).

Every case runs the real CLI ``main()`` on a real bundle written by tests/wire/bundle_kit.py
(real keys, real Merkle tree, real checkpoint notes and cosignatures), edited the way an
attacker with the collector's database *and its log key* would edit it: the log key alone
cannot fake what an auditor already holds (``--trusted-checkpoint``) or what independent
witnesses cosigned (``--witness``/``--quorum``), and a tail no checkpoint covers fails.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.wire.bundle_kit import (
    CLOCK_WITNESS,
    COLLECTOR_KEY,
    COSIGNED_AT,
    EXTERNAL_WITNESS,
    ORIGIN,
    ROGUE_KEY,
    LedgerBuilder,
    append_line,
    proof_export,
    read_lines,
    rechain,
    standard_ledger,
    witness_vkey,
    write_lines,
)
from wire.audit import TreeFrontier
from wire.canonical import canonical
from wire.ledger import Checkpoint, Entry
from wire.merkle import MemoryTree, entry_leaf_hash, root
from wire.note import Checkpoint as NoteCheckpoint
from wire.note import Note
from wire.verify_cli import main
from wire.witness_policy import PolicyError, WitnessPolicy

PINNED = COLLECTOR_KEY.verify_key.b64
LAST_AT = 1764140470000000
WITNESS_ARGS = ("--witness", witness_vkey(EXTERNAL_WITNESS), "--witness",
                witness_vkey(CLOCK_WITNESS))
V2 = "checkpoints.v2.ndjson"
Lines = list[dict[str, Any]]


def run(bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    rc = main([str(bundle), "--collector-key", PINNED, "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


@dataclass
class Site:
    """A v2 bundle, and the checkpoint notes an auditor kept from earlier (before any attack)."""

    bundle: Path
    builder: LedgerBuilder
    held: dict[int, Path]        # size -> a file holding the genuine note of that size

    def args(self, spec: tuple[str, ...]) -> list[str]:
        """Expand ``held:N`` into the path of the held note of size N."""
        return [str(self.held[int(a[5:])]) if a.startswith("held:") else a for a in spec]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    b = standard_ledger(v2=True)
    held = {}
    for text in b.notes:
        size = NoteCheckpoint.from_body(Note.from_text(text).body).size
        held[size] = tmp_path / f"held-{size}.txt"
        held[size].write_text(text)
    return Site(b.write(tmp_path / "bundle"), b, held)


# -- the attacker's tools: they hold the log key, not the witnesses' keys ----------------------

def notes(bundle: Path) -> list[str]:
    return [x["note"] for x in read_lines(bundle, V2)]


def write_notes(bundle: Path, texts: list[str]) -> None:
    write_lines(bundle, [{"note": t} for t in texts], V2)


def size_of(note_text: str) -> int:
    return NoteCheckpoint.from_body(Note.from_text(note_text).body).size


def resign(bundle: Path, lines: Lines, *, keep_upto: int) -> None:
    """Rewrite the ledger and re-make every checkpoint above ``keep_upto`` with the log key,
    over the edited ledger: v1 checkpoints and v2 notes (which no witness cosigns), up to a
    checkpoint of the ledger's new size, as the attacker's export would publish."""
    write_lines(bundle, lines)
    tree = MemoryTree()
    tree.append(entry_leaf_hash(Entry.from_dict(x["entry"])) for x in lines)
    n = len(lines)
    v1 = [c for c in read_lines(bundle, "checkpoints.ndjson")
          if c["checkpoint"]["size"] <= keep_upto]
    kept = [t for t in notes(bundle) if size_of(t) <= keep_upto]
    sizes = sorted({min(c, n) for c in (15, 18) if c > keep_upto} | {n})
    for size in sizes:
        v1.append(Checkpoint(log=COLLECTOR_KEY.key_id, size=size, head=lines[size - 1]["hash"],
                             at=LAST_AT).sign(COLLECTOR_KEY).to_dict())
        kept.append(NoteCheckpoint(ORIGIN, size, root(tree, size)).sign(COLLECTOR_KEY))
    write_lines(bundle, v1, "checkpoints.ndjson")
    write_notes(bundle, kept)


def truncate(bundle: Path, size: int, *, remake: bool) -> None:
    """Delete the entries from ``size`` on and every checkpoint above them; with ``remake``,
    sign fresh checkpoints of the new size with the log key (so the tail looks covered)."""
    lines = read_lines(bundle)[:size]
    if remake:
        resign(bundle, lines, keep_upto=min(size, 10))
        return
    write_lines(bundle, lines)
    write_lines(bundle, [c for c in read_lines(bundle, "checkpoints.ndjson")
                         if c["checkpoint"]["size"] <= size], "checkpoints.ndjson")
    write_notes(bundle, [t for t in notes(bundle) if size_of(t) <= size])


def rehash_without_punch(bundle: Path) -> None:
    """Delete punch idx 13 (clock-0042 #4) from the middle, re-chain everything after it and
    re-make the checkpoints above it (sizes 14 and 17) with the log key."""
    lines = read_lines(bundle)
    del lines[13]
    rechain(lines, 13)
    resign(bundle, lines, keep_upto=10)


def drop_checkpoints(bundle: Path) -> None:
    (bundle / "checkpoints.ndjson").write_bytes(b"")
    (bundle / V2).write_bytes(b"")


def append_uncovered(bundle: Path) -> None:
    lines = read_lines(bundle)
    append_line(lines, "access", {"principal": "mallory", "action": "read", "at": LAST_AT},
                LAST_AT)
    write_lines(bundle, lines)


def drop_newest_note(bundle: Path) -> None:
    write_notes(bundle, notes(bundle)[:-1])


def notes_out_of_order(bundle: Path) -> None:
    texts = notes(bundle)
    texts[1], texts[2] = texts[2], texts[1]
    write_notes(bundle, texts)


def note_by_rogue_key(bundle: Path) -> None:
    texts = notes(bundle)
    cp = NoteCheckpoint.from_body(Note.from_text(texts[-1]).body)
    texts[-1] = cp.sign(ROGUE_KEY)
    write_notes(bundle, texts)


def note_with_wrong_root(bundle: Path) -> None:
    texts = notes(bundle)
    cp = NoteCheckpoint.from_body(Note.from_text(texts[1]).body)
    texts[1] = NoteCheckpoint(ORIGIN, cp.size, bytes(32)).sign(COLLECTOR_KEY)
    write_notes(bundle, texts)


def nothing(bundle: Path) -> None:
    """No attack: the case checks the verifier's options alone."""


# (name, attack, extra argv, expected first failure (idx, check) or None for exit 0, message)
CASES: list[tuple[str, Callable[[Path], None], tuple[str, ...], tuple[int | None, str] | None,
                  str]] = [
    ("valid, 2 witnesses, quorum 2, trusted", nothing,
     (*WITNESS_ARGS, "--quorum", "2", "--trusted-checkpoint", "held:10"), None, ""),
    ("valid, trusted = newest", nothing, ("--trusted-checkpoint", "held:18"), None, ""),
    ("truncated, trusted held", lambda b: truncate(b, 16, remake=False),
     ("--trusted-checkpoint", "held:18"), (16, "trusted-checkpoint"),
     "the ledger is smaller than a checkpoint you hold — truncated"),
    ("truncated, nothing held: the tail is not covered", lambda b: truncate(b, 16, remake=False),
     (), (15, "coverage"), "no v2 checkpoint covers the last entry"),
    ("truncated and re-signed, trusted held", lambda b: truncate(b, 16, remake=True),
     ("--trusted-checkpoint", "held:18"), (16, "trusted-checkpoint"), "truncated"),
    ("truncated and re-signed, quorum 1", lambda b: truncate(b, 16, remake=True),
     (*WITNESS_ARGS, "--quorum", "1"), (15, "witness"),
     "0 of the required 1 witness cosignatures"),
    # The limit of witnesses alone: cut back to exactly an old, genuinely cosigned
    # checkpoint and the quorum is met; a held checkpoint or a freshness bound catches it.
    ("truncated to an old cosigned checkpoint, quorum 2 (passes: the stated limit)",
     lambda b: truncate(b, 15, remake=False), (*WITNESS_ARGS, "--quorum", "2"), None, ""),
    ("truncated to an old cosigned checkpoint, trusted held",
     lambda b: truncate(b, 15, remake=False), ("--trusted-checkpoint", "held:18"),
     (15, "trusted-checkpoint"), "truncated"),
    ("truncated to an old cosigned checkpoint, max-age",
     lambda b: truncate(b, 15, remake=False),
     (*WITNESS_ARGS, "--max-age", "3600", "--now", str(COSIGNED_AT + 86_400)), (14, "witness"),
     "too old to count"),
    ("re-hashed, nothing held (passes: why v2 exists)", rehash_without_punch, (), None, ""),
    ("re-hashed, trusted held", rehash_without_punch, ("--trusted-checkpoint", "held:15"),
     (14, "trusted-checkpoint"), "the ledger was rewritten below a checkpoint you hold"),
    ("re-hashed, quorum 1", rehash_without_punch, (*WITNESS_ARGS, "--quorum", "1"),
     (16, "witness"), "0 of the required 1"),
    ("zero checkpoints", drop_checkpoints, (), (17, "coverage"), "no checkpoint"),
    ("tail not covered", append_uncovered, (), (18, "coverage"),
     "no v2 checkpoint covers the last entry (idx 18)"),
    ("newest v2 note missing (v1 still covers)", drop_newest_note, (), (17, "coverage"),
     "no v2 checkpoint covers"),
    ("notes out of size order", notes_out_of_order, (), (9, "checkpoint-v2"),
     "not in size order"),
    ("note signed by another key", note_by_rogue_key, (), (None, "checkpoint-v2"),
     "not signed by a trusted collector log key"),
    ("note with a root the ledger does not have", note_with_wrong_root, (),
     (9, "checkpoint-v2"), "the ledger differs from what the collector signed"),
    ("origin pinned to another log", nothing, ("--origin", "other.example/log"),
     (None, "checkpoint-v2"), "is not the log's origin"),
    ("quorum above the witnesses' cosignatures", nothing,
     ("--witness", witness_vkey(EXTERNAL_WITNESS), "--witness",
      witness_vkey(("witness.other.example", ROGUE_KEY)), "--quorum", "2"), (17, "witness"),
     "1 of the required 2"),
    ("no witness given: quorum 0", nothing, ("--quorum", "0"), None, ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_d5_v2_verdicts(case: tuple[str, Callable[[Path], None], tuple[str, ...],
                                 tuple[int | None, str] | None, str],
                     site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    name, attack, extra, expected, message = case
    attack(site.bundle)
    argv = site.args(extra)
    rc, report = run(site.bundle, capsys, *argv)
    if expected is None:
        assert (rc, report["first_failure"]) == (0, None), report["first_failure"]
        assert report["covered"] == report["size"]
        return
    first = report["first_failure"]
    assert rc == 1, name
    assert (first["idx"], first["check"], first["tamper"]) == (*expected, True), first
    assert message in first["message"]
    # the human report names the same check
    rc = main([str(site.bundle), "--collector-key", PINNED, *argv])
    text = capsys.readouterr().out
    assert rc == 1
    assert f") {expected[1]}: " in text
    assert "RESULT: FAILED at " in text


def test_d5_valid_v2_report(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = run(site.bundle, capsys, *WITNESS_ARGS, "--quorum", "2")
    tree = site.builder.tree
    assert rc == 0
    assert (report["checkpoints_v2"], report["covered"], report["origin"], report["v2"]) == (
        4, 18, ORIGIN, True)
    assert report["root"] == Note.from_text(site.builder.notes[-1]).body.split("\n")[2]
    assert report["root"] == base64.b64encode(root(tree, 18)).decode()
    assert report["witness"] == {
        "cosigned_by": [EXTERNAL_WITNESS[0], CLOCK_WITNESS[0]], "stale": [],
        "external": [EXTERNAL_WITNESS[0]], "quorum": 2, "external_quorum": 0, "met": True}
    rc = main([str(site.bundle), "--collector-key", PINNED, *WITNESS_ARGS])
    text = capsys.readouterr().out
    assert rc == 0
    assert "v2 checkpoints: 4 (origin acme.example/timeclock)" in text
    assert "covered by a checkpoint: 18 of 18 entries" in text
    assert (f"witness policy: quorum 2 of 2 witnesses; newest checkpoint cosigned by: "
            f"{EXTERNAL_WITNESS[0]}, {CLOCK_WITNESS[0]}") in text
    assert "RESULT: OK" in text


def test_d5_v1_bundle_still_verifies_and_a_trusted_note_checks_it(
        tmp_path: Path, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN.md §8: v1 bundles still verify. The tree is computed from the entries alone, so
    a held v2 note checks a v1 bundle too; a quorum cannot be met without v2 notes."""
    v1 = standard_ledger().write(tmp_path / "v1")
    assert not (v1 / V2).exists()
    rc, report = run(v1, capsys, "--trusted-checkpoint", str(site.held[15]))
    assert (rc, report["v2"], report["covered"]) == (0, False, 18)
    rc, report = run(v1, capsys, *WITNESS_ARGS)
    assert rc == 1
    assert (report["first_failure"]["idx"], report["first_failure"]["check"]) == (
        None, "witness")
    assert "no v2 checkpoint" in report["first_failure"]["message"]


def test_d5_trusted_checkpoint_of_another_log_fails(tmp_path: Path, site: Site,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "foreign.txt"
    foreign.write_text(NoteCheckpoint(ORIGIN, 4, bytes(32)).sign(ROGUE_KEY))
    rc, report = run(site.bundle, capsys, "--trusted-checkpoint", str(foreign))
    first = report["first_failure"]
    assert (rc, first["idx"], first["check"]) == (1, None, "trusted-checkpoint")
    assert "cannot vouch for this ledger" in first["message"]


# -- a flipped bit anywhere in a note or cosignature ------------------------------------------

def _flip_bytes(raw: bytes, line: int, pos: int) -> bytes:
    """``raw`` with bit pos % 8 of byte ``pos`` of line ``line`` flipped."""
    starts = [0] + [i + 1 for i, c in enumerate(raw) if c == 0x0A]
    at = starts[line] + pos
    return raw[:at] + bytes([raw[at] ^ (1 << (pos % 8))]) + raw[at + 1:]


def test_d5_every_byte_of_the_newest_note_flipped_fails(site: Site,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """One bit of each byte of the newest note's line (the bit position rotates), with a
    quorum of both witnesses: every flip must fail, whatever part it hits (JSON, body, log
    signature, either cosignature, the line's newline)."""
    path = site.bundle / V2
    original = path.read_bytes()
    line = original.rstrip(b"\n").count(b"\n")          # the last line
    length = len(original.split(b"\n")[line]) + 1         # with its newline
    passed = []
    for pos in range(length):
        path.write_bytes(_flip_bytes(original, line, pos))
        rc = main([str(site.bundle), "--collector-key", PINNED, "--json", *WITNESS_ARGS])
        capsys.readouterr()
        if rc != 1:
            passed.append(pos)
    assert passed == [], f"flips at these byte positions still verify: {passed}"


@pytest.mark.parametrize("part", ["body", "log signature"])
def test_d5_flipped_bit_in_an_older_note_fails(part: str, site: Site,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    texts = notes(site.bundle)
    text = texts[1]
    at = text.index("\n") + 1 if part == "body" else text.index("\u2014 ") + len(ORIGIN) + 5
    texts[1] = text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1:]
    write_notes(site.bundle, texts)
    rc, report = run(site.bundle, capsys)
    assert (rc, report["first_failure"]["check"]) == (1, "checkpoint-v2")


def test_d5_bad_cosignature_in_an_older_note_fails(site: Site,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A named witness's line must verify in every note (C2SP: reject, do not skip)."""
    texts = notes(site.bundle)
    note = Note.from_text(texts[0])
    cp = NoteCheckpoint.from_body(note.body)
    other = NoteCheckpoint(cp.origin, cp.size + 1, cp.root)      # cosigned a different body
    bad = other.cosign(EXTERNAL_WITNESS[1], EXTERNAL_WITNESS[0], timestamp=COSIGNED_AT)
    texts[0] = Note(note.body, (note.signatures[0], bad)).to_text()
    write_notes(site.bundle, texts)
    rc, report = run(site.bundle, capsys, *WITNESS_ARGS)
    first = report["first_failure"]
    assert (rc, first["idx"], first["check"]) == (1, 3, "witness")
    assert "does not verify" in first["message"]


# -- the policy file ---------------------------------------------------------------------------

def test_d5_witness_policy_file(tmp_path: Path, site: Site,
                             capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.txt"
    policy.write_text(f"# HR's policy for the ACME ledger\norigin {ORIGIN}\n"
                      f"witness {witness_vkey(EXTERNAL_WITNESS)}\n"
                      f"witness {witness_vkey(CLOCK_WITNESS)}   # clock-0042\n"
                      "quorum 2\nexternal 1\n")
    rc, report = run(site.bundle, capsys, "--witness-policy", str(policy))
    assert (rc, report["witness"]["external"]) == (0, [EXTERNAL_WITNESS[0]])
    assert report["policy"] == "quorum 2 of 2 witnesses, 1 external"
    # the clock alone is not enough when the policy asks for an external witness
    policy.write_text(f"origin {ORIGIN}\nwitness {witness_vkey(CLOCK_WITNESS)}\n"
                      f"witness {witness_vkey(('witness.other.example', ROGUE_KEY))}\n"
                      "quorum 1\nexternal 1\n")
    rc, report = run(site.bundle, capsys, "--witness-policy", str(policy))
    assert (rc, report["first_failure"]["check"]) == (1, "witness")
    assert "0 of the required 1 external" in report["first_failure"]["message"]


@pytest.mark.parametrize(("text", "message"), [
    ("quorum 2\n", "quorum 2 needs 0…0"),
    ("witness nonsense\n", "not a C2SP verifier key"),
    (f"witness {witness_vkey(CLOCK_WITNESS)}\nquorum 1\nquorum 1\n", "quorum given twice"),
    ("threshold 1\n", "unknown directive 'threshold'"),
    (f"witness {witness_vkey(CLOCK_WITNESS)}\nexternal 1\nquorum 1\n", "external needs origin"),
    (f"witness {witness_vkey(CLOCK_WITNESS)}\nwitness {witness_vkey(CLOCK_WITNESS)}\n",
     "named twice"),
    ("witness acme.example/timeclock+b56d8385+ASmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X\n",
     "type 0x01 key"),
])
def test_d5_bad_policy_is_a_usage_error(text: str, message: str, tmp_path: Path, site: Site,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")):
        WitnessPolicy.from_text(text)
    policy = tmp_path / "policy.txt"
    policy.write_text(text)
    assert main([str(site.bundle), "--collector-key", PINNED, "--witness-policy",
                 str(policy)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--trusted-checkpoint", "{missing}"], "cannot read"),
    (["--trusted-checkpoint", "{garbage}"], "not a checkpoint note"),
    (["--quorum", "1"], "quorum 1 needs 0…0"),
    (["--witness-policy", "{garbage}", "--quorum", "1"], "replaces --witness"),
])
def test_d5_v2_usage_errors_exit_2(argv: list[str], message: str, site: Site, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a note\n")
    args = [a.format(missing=tmp_path / "absent", garbage=garbage) for a in argv]
    assert main([str(site.bundle), "--collector-key", PINNED, *args]) == 2
    assert message in capsys.readouterr().err


def test_d5_streaming_frontier_matches_the_stored_tree() -> None:
    """The auditor's O(log n) frontier gives wire.merkle's root at every size 0..70."""
    tree, frontier = MemoryTree(), TreeFrontier()
    assert frontier.root() == root(tree, 0)
    for i in range(70):
        leaf = entry_leaf_hash(Entry(idx=i, kind="access", at=i, body="ab" * 32,
                                     prev="cd" * 32))
        tree.append([leaf])
        frontier.append(leaf)
        assert frontier.root() == root(tree, i + 1), i
    assert canonical({"n": frontier.size}) == b'{"n":70}'


# -- a payroll export with proofs, verified alone ------------------------------------------------

def export_lines(path: Path) -> Lines:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_export(path: Path, lines: Lines) -> None:
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def edit_row_credential(lines: Lines) -> None:
    lines[3]["credential"] = "em4100:0000000666"


def edit_row_action_and_effective(lines: Lines) -> None:
    other = "in" if lines[3]["action"] != "in" else "out"
    lines[3]["action"] = lines[3]["effective"]["action"] = other


def edit_row_and_its_body(lines: Lines) -> None:
    lines[3]["credential"] = "em4100:0000000666"
    lines[3]["proof"]["body"]["punch"]["credential"] = "em4100:0000000666"


def edit_effective_without_correction(lines: Lines) -> None:
    lines[3]["effective"]["device_time_us"] += 3_600_000_000


def swap_proofs(lines: Lines) -> None:
    a, b = lines[2]["proof"], lines[5]["proof"]
    a["inclusion_path"], b["inclusion_path"] = b["inclusion_path"], a["inclusion_path"]


def swap_whole_proofs(lines: Lines) -> None:
    lines[2]["proof"], lines[5]["proof"] = lines[5]["proof"], lines[2]["proof"]


def drop_row(lines: Lines) -> None:
    del lines[4]


def duplicate_row(lines: Lines) -> None:
    lines.insert(4, lines[3])
    lines[-1]["trailer"]["rows"] += 1


def strip_proof(lines: Lines) -> None:
    del lines[2]["proof"]


def older_checkpoint(lines: Lines, b: LedgerBuilder) -> None:
    lines[0]["header"]["proofs"]["checkpoint"] = b.notes[2]        # size 15, rows up to 17


def uncosigned_checkpoint(lines: Lines, b: LedgerBuilder) -> None:
    cp = NoteCheckpoint(ORIGIN, 18, root(b.tree, 18))
    lines[0]["header"]["proofs"]["checkpoint"] = cp.sign(COLLECTOR_KEY)


def rogue_checkpoint(lines: Lines, b: LedgerBuilder) -> None:
    cp = NoteCheckpoint(ORIGIN, 18, root(b.tree, 18))
    lines[0]["header"]["proofs"]["checkpoint"] = cp.sign(ROGUE_KEY)


def cut_trailer(lines: Lines) -> None:
    del lines[-1]


# (name, edit of the export's lines, expected (line, check) of the first failure)
EXPORT_CASES: list[tuple[str, Callable[..., None], tuple[int | None, str]]] = [
    ("edited row", edit_row_credential, (4, "fields")),
    ("edited row and its effective value", edit_row_action_and_effective, (4, "fields")),
    ("edited row and the body in its proof", edit_row_and_its_body, (4, "row")),
    ("effective value changed without a correction", edit_effective_without_correction,
     (4, "fields")),
    ("swapped inclusion paths", swap_proofs, (3, "inclusion")),
    ("swapped proofs", swap_whole_proofs, (3, "row")),
    ("a row without its proof", strip_proof, (3, "row")),
    ("a row removed", drop_row, (11, "trailer")),
    ("a row repeated", duplicate_row, (5, "row")),
    ("trailer cut off", cut_trailer, (None, "trailer")),
    # every row's proof is for size 18, not 15: the first row already fails
    ("an older checkpoint than the rows need", older_checkpoint, (2, "inclusion")),
    ("a checkpoint no witness cosigned", uncosigned_checkpoint, (1, "witness")),
    ("a checkpoint signed by another key", rogue_checkpoint, (1, "note")),
]


def _export_run(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    rc = main(["--export", str(path), "--collector-key", PINNED, "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_d5_export_with_proofs_verifies_alone(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    b = standard_ledger(v2=True)
    path = proof_export(b, tmp_path / "payroll.ndjson")
    rc, report = _export_run(path, capsys, *WITNESS_ARGS)
    assert (rc, report["rows"], report["proven"], report["checkpoint_size"]) == (0, 10, 10, 18)
    assert report["witness"]["cosigned_by"] == [EXTERNAL_WITNESS[0], CLOCK_WITNESS[0]]
    assert [f["message"][:24] for f in report["findings"]] == ["the site column is not p"]
    rc = main(["--export", str(path), "--collector-key", PINNED, *WITNESS_ARGS])
    text = capsys.readouterr().out
    assert rc == 0
    assert "rows: 10  proven: 10" in text
    assert "RESULT: OK" in text


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_d5_export_with_proofs_attacks(
        case: tuple[str, Callable[..., None], tuple[int | None, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    name, edit, (line, check) = case
    b = standard_ledger(v2=True)
    path = proof_export(b, tmp_path / "payroll.ndjson")
    lines = export_lines(path)
    if edit.__code__.co_argcount == 2:
        edit(lines, b)
    else:
        edit(lines)
    write_export(path, lines)
    rc, report = _export_run(path, capsys, *WITNESS_ARGS)
    first = report["first_failure"]
    assert rc == 1, name
    assert (first["line"], first["check"]) == (line, check), first
    rc = main(["--export", str(path), "--collector-key", PINNED, *WITNESS_ARGS])
    assert rc == 1
    assert f"check {check}: " in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--export", "{path}"], "--export needs --collector-key"),
    (["--export", "{path}", "{path}"], "give a BUNDLE_DIR, --export FILE or --evidence PACK"),
    (["--export", "{plain}", "--collector-key", PINNED], "not a header with proofs"),
])
def test_d5_export_usage_errors_exit_2(argv: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = proof_export(standard_ledger(v2=True), tmp_path / "payroll.ndjson")
    plain = tmp_path / "plain.ndjson"
    plain.write_text('{"header": {"export": "timeclock payroll v1"}}\n{"trailer": {"rows": 0}}\n')
    args = [a.format(path=path, plain=plain) for a in argv]
    if "BUNDLE_DIR" in message:
        with pytest.raises(SystemExit, match="2"):
            main(args)
    else:
        assert main(args) == 2
    assert message in capsys.readouterr().err


def test_d5_export_rows_with_corrections_are_noted_not_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrected row shows other effective values; the correction entries are not in the
    export, so the verifier says so and still proves the original values."""
    b = standard_ledger(v2=True)
    path = proof_export(b, tmp_path / "payroll.ndjson")
    lines = export_lines(path)
    lines[1]["effective"]["action"] = "out"
    lines[1]["corrections"] = {"action": {"correction_idx": 12, "value": "out"}}
    lines[2]["proof"]["inclusion_path"][0] = 7           # not a base64 hash
    write_export(path, lines)
    rc, report = _export_run(path, capsys, *WITNESS_ARGS)
    assert rc == 1
    assert (report["first_failure"]["line"], report["first_failure"]["check"]) == (
        3, "inclusion")
    assert (report["rows"], report["proven"]) == (10, 9)
    notes = [f["message"] for f in report["findings"] if not f["failure"]]
    assert notes[0].startswith("1 row(s) show effective values that rest on corrections")


# -- a policy that counts the clocks enrolled before the held checkpoint (DESIGN.md §8.3) -------

ENROLLED_POLICY = f"origin {ORIGIN}\nclocks enrolled-before-trusted\nquorum 1\n"


def enrol_rogue_clock_and_cosign(bundle: Path) -> None:
    """The operator (log key in hand) enrols a clock of its own after everything the auditor
    holds, and has it cosign a fresh checkpoint of the grown ledger."""
    lines = read_lines(bundle)
    append_line(lines, "device", {"event": "enrolled", "device": "clock-evil", "site": "hq",
                                  "key": ROGUE_KEY.key_id,
                                  "signing_key": ROGUE_KEY.verify_key.b64}, LAST_AT)
    write_lines(bundle, lines)
    tree = MemoryTree()
    tree.append(entry_leaf_hash(Entry.from_dict(x["entry"])) for x in lines)
    cp = NoteCheckpoint(ORIGIN, len(lines), root(tree, len(lines)))
    note = cp.signed_note(COLLECTOR_KEY).with_signature(
        cp.cosign(ROGUE_KEY, f"{ORIGIN}/devices/clock-evil", timestamp=COSIGNED_AT))
    write_notes(bundle, [*notes(bundle), note.to_text()])


ENROLLED_CASES: list[tuple[Callable[[Path], None], int | None, tuple[int, str] | None]] = [
    (nothing, 10, None),                        # clock-0042 (enrolled at idx 4) cosigned
    (nothing, 4, (17, "witness")),              # enrolled at idx 4: not before size 4
    (nothing, None, (17, "witness")),           # no held checkpoint: no clock counts
    (enrol_rogue_clock_and_cosign, 18, (18, "witness")),   # enrolled after what is held
]


@pytest.mark.parametrize("case", ENROLLED_CASES,
                         ids=["held-10", "held-4", "nothing-held", "rogue-clock-after-held"])
def test_d5_policy_counting_clocks_enrolled_before_the_held_checkpoint(
        case: tuple[Callable[[Path], None], int | None, tuple[int, str] | None], site: Site,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attack, held, expected = case
    policy = tmp_path / "policy.txt"
    policy.write_text(ENROLLED_POLICY)
    attack(site.bundle)
    extra = ["--trusted-checkpoint", str(site.held[held])] if held is not None else []
    rc, report = run(site.bundle, capsys, "--witness-policy", str(policy), *extra)
    if expected is None:
        assert (rc, report["witness"]["cosigned_by"]) == (0, [CLOCK_WITNESS[0]])
        assert "with the clocks enrolled before the trusted checkpoint" in report["policy"]
        return
    first = report["first_failure"]
    assert (rc, first["idx"], first["check"]) == (1, *expected)
    assert "0 of the required 1 witness cosignatures" in first["message"]


@pytest.mark.parametrize(("text", "message"), [
    ("clocks sometimes\nquorum 1\n", "the one value is enrolled-before-trusted"),
    ("clocks enrolled-before-trusted\n", "quorum all is not defined"),
])
def test_d5_bad_clocks_directive(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        WitnessPolicy.from_text(text)
