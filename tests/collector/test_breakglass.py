"""Break-glass access (issue 13 item 7; CONTROLS.md D11) on both stores (real SQLite file, real
PostgreSQL as the app role), through collector.access.breakglass, the API and the CLI: a seal
is inactive until opened with its secret; opening records the opening and a severity-1 alert
entry at once; its roles end when the window does, refused at request time; the post-use
review is by another principal, once; an unreviewed opening is a `timeclock-verify` finding
and, after its grace, one overdue alert from the service's tick, also after a restart.
The API and the service's tick: tests/collector/test_access_controls_api.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import ForbiddenError, ReviewError
from collector.access.breakglass import (
    OPEN_ALERT,
    BreakGlass,
    BreakGlassSettings,
)
from collector.access.gates import Gates
from collector.access.principals import PrincipalError, get_principal
from collector.cli.main import main
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.records.exports import export_bundle
from tests.collector.access_kit import access_store, bodies
from tests.collector.api_kit import issue_tokens
from tests.collector.ledger_kit import T0, seeded_key
from wire import verify_cli
from wire.ledger import Checkpoint

S = 1_000_000


@pytest.fixture
def astore(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[SQLStore]:
    with access_store(store_kind, sqlite_path, request) as s:
        yield s


def _principals(store: SQLStore) -> None:
    ensure_schema(store)
    issue_tokens(store, T0, {"oncall": ("ops.devices",), "bob": ("audit.review",),
                             "carol": ("audit.read",)})


def test_d11_breakglass_is_inactive_until_opened_and_opening_alerts_at_once(
        astore: SQLStore) -> None:
    store = astore
    _principals(store)
    bg = BreakGlass(store, BreakGlassSettings(max_duration_s=1800))
    with pytest.raises(PrincipalError, match="no enabled principal 'nobody'"):
        bg.seal("nobody", ["audit.read"], by="cli:test", now_us=T0 + 1)
    issued = bg.seal("oncall", ["audit.read"], by="cli:test", now_us=T0 + 2)
    assert issued.secret.startswith("tcb_")
    assert issued.secret not in json.dumps(bodies(store, "break_glass"))   # only its hash
    gates = Gates(store)
    oncall = get_principal(store, "oncall")
    assert oncall is not None
    gates.refresh()
    assert gates.with_break_glass(oncall, ("audit.read",), T0 + 3).roles == {"ops.devices"}

    size = store.head()[0]
    with pytest.raises(ForbiddenError, match="wrong secret"):
        bg.open(issued.id, "tcb_" + "x" * 43, principal=oncall, by="oncall",
                reason="locked out", case="INC-1", now_us=T0 + 4)
    [refusal] = [b for b in bodies(store, "access", size)]       # recorded, nothing else
    assert (refusal["action"], refusal["outcome"], refusal["break_glass"]) == (
        "break-glass.open", "refused", issued.id)
    carol = get_principal(store, "carol")
    assert carol is not None
    size = store.head()[0]
    with pytest.raises(ForbiddenError, match="sealed for oncall, not carol"):
        bg.open(issued.id, issued.secret, principal=carol, by="carol", reason="r",
                case="INC-1", now_us=T0 + 5)
    with pytest.raises(ForbiddenError, match="shows no second factor"):
        bg.open(issued.id, issued.secret, principal=oncall, by="oncall", reason="r",
                case="INC-1", now_us=T0 + 5, amr=["pwd"])         # an OIDC sign-in without MFA
    with pytest.raises(PrincipalError, match="case"):
        bg.open(issued.id, issued.secret, principal=oncall, by="oncall", reason="r",
                case="no spaces allowed", now_us=T0 + 5)
    assert store.head()[0] == size                                # refusals record nothing

    state = bg.open(issued.id, issued.secret, principal=oncall, by="oncall",
                    reason="API admin locked out", case="INC-4411", now_us=T0 + 10 * S)
    assert state["status"] == "open"
    assert state["opened"]["until"] - state["opened"]["from"] == 1800 * S
    [alert] = bodies(store, "alert", size)
    assert (alert["alert"], alert["severity"], alert["principal"], alert["break_glass"]) == (
        OPEN_ALERT, 1, "oncall", issued.id)
    kinds = [se.entry.kind for se in store.entries(size)]
    assert kinds == ["break_glass", "alert"]                      # one transaction, in order
    gates.refresh()
    assert gates.with_break_glass(oncall, ("audit.read",), T0 + 11 * S).roles == {
        "ops.devices", "audit.read"}
    with pytest.raises(ReviewError, match="a seal opens once"):
        bg.open(issued.id, issued.secret, principal=oncall, by="oncall", reason="again",
                case="INC-4411", now_us=T0 + 12 * S)


def test_d11_breakglass_review_by_another_principal_once(astore: SQLStore) -> None:
    store = astore
    _principals(store)
    bg = BreakGlass(store)
    issued = bg.seal("oncall", ["audit.read"], by="cli:test", now_us=T0)
    with pytest.raises(ReviewError, match="never opened"):
        bg.review(issued.id, by="bob", note="n", now_us=T0 + 1)
    oncall = get_principal(store, "oncall")
    assert oncall is not None
    bg.open(issued.id, issued.secret, principal=oncall, by="oncall", reason="r",
            case="INC-1", now_us=T0 + 2)
    assert [r["status"] for r in bg.list(now_us=T0 + 3)] == ["open"]
    assert [r["status"] for r in bg.list(now_us=T0 + 3601 * S)] == ["overdue-review"]
    size = store.head()[0]
    with pytest.raises(ForbiddenError, match="another principal reviews it"):
        bg.review(issued.id, by="oncall", note="all fine", now_us=T0 + 3602 * S)
    assert store.head()[0] == size
    state = bg.review(issued.id, by="bob", note="every access entry matched INC-1",
                      now_us=T0 + 3603 * S)
    assert (state["status"], state["review"]["by"]) == ("reviewed", "bob")
    with pytest.raises(ReviewError, match="was reviewed at idx"):
        bg.review(issued.id, by="carol", note="again", now_us=T0 + 3604 * S)


def test_d11_breakglass_cli_and_timeclock_verify_reports_the_unreviewed(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _principals(sqlite_store)
    db = str(sqlite_path)
    assert main(["breakglass", "seal", "--store", db, "--principal", "oncall",
                 "--role", "audit.read"]) == 0
    cap = capsys.readouterr()
    bg_id = cap.out.split()[1]
    secret = tmp_path / "envelope"
    secret.write_text(cap.out.strip().splitlines()[-1] + "\n")
    assert "shown once" in cap.err
    assert main(["breakglass", "open", "--store", db, "--id", bg_id, "--principal", "oncall",
                 "--reason", "locked out", "--case", "INC-7", "--secret-file",
                 str(secret)]) == 0
    assert "OPEN for oncall" in capsys.readouterr().out

    def verify() -> str:
        log_key = seeded_key("log-key")
        size, head = sqlite_store.head()
        sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                               at=T0 + size).sign(log_key))
        bundle = tmp_path / f"bundle-{size}"
        export_bundle(sqlite_store, bundle, [log_key.verify_key])
        assert verify_cli.main([str(bundle), "--collector-key", log_key.verify_key.b64]) == 0
        return capsys.readouterr().out

    out = verify()
    assert f"break-glass {bg_id} opened by oncall (case INC-7) has no post-use review" in out
    assert main(["breakglass", "review", "--store", db, "--id", bg_id, "--by", "oncall",
                 "--note", "fine"]) == 2
    assert "another principal reviews it" in capsys.readouterr().err
    assert main(["breakglass", "review", "--store", db, "--id", bg_id, "--by", "bob",
                 "--note", "checked"]) == 0
    assert main(["breakglass", "list", "--store", db]) == 0
    assert "reviewed" in capsys.readouterr().out
    assert "has no post-use review" not in verify()


_SEAL = {"event": "seal", "id": "bg-0123456789ab", "principal": "oncall",
         "roles": ["audit.read"], "max_s": 3600, "by": "cli:root", "secret_hash": "ab" * 32}
_OPEN = {"event": "open", "id": "bg-0123456789ab", "seal_idx": 3, "principal": "oncall",
         "by": "oncall", "reason": "locked out", "case": "INC-1", "from": T0,
         "until": T0 + 3600 * S, "mfa": "sealed-secret"}


@pytest.mark.parametrize(("body", "error"), [
    ({**_SEAL, "max_s": 14401}, "max_s: at most 14400 s"),
    ({**_SEAL, "roles": []}, "roles: expected a non-empty array"),
    ({**_SEAL, "roles": ["hr.read", "audit.read"]}, "sorted and distinct"),
    ({**_SEAL, "id": "bg-1"}, "id"),
    ({**_OPEN, "until": T0 + 14401 * S}, "at most 14400 s"),
    ({**_OPEN, "until": T0}, "from/until"),
    ({**_OPEN, "seal_idx": 9}, "seal_idx 9 is not an earlier entry"),
    ({**_OPEN, "reason": "x\x07"}, "control characters"),
    ({**_OPEN, "mfa": "none"}, "mfa"),
    ({"event": "review", "id": "bg-0123456789ab", "open_idx": 4, "by": "bob"}, "note"),
])
def test_d11_breakglass_bodies_are_parsed_strictly(body: dict[str, Any], error: str) -> None:
    from wire.bodies import BodyError, parse_body  # noqa: PLC0415 - the one dispatch

    with pytest.raises(BodyError, match=error):
        parse_body("break_glass", body, idx=5)
    assert parse_body("break_glass", _OPEN, idx=5) is not None
