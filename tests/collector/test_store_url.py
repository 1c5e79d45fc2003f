"""Store URLs name the file an operator meant, whatever the number of slashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import LedgerError
from collector.ledger import open_store, sqlite_path
from collector.ledger.sqlite import connect


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///var/lib/timeclock/ledger.db", Path("/var/lib/timeclock/ledger.db")),
    ("sqlite:////var/lib/timeclock/ledger.db", Path("/var/lib/timeclock/ledger.db")),
    ("sqlite:ledger.db", Path("ledger.db")),
    ("postgresql://app@localhost/timeclock", None),
])
def test_sqlite_paths(url: str, path: Path | None) -> None:
    assert sqlite_path(url) == path


def test_read_only_opens_take_any_file_name(tmp_path: Path) -> None:
    """Exports open the ledger read-only through a SQLite URI: odd names stay file names."""
    for name in ("ledger.db", "odd?name#1%.db"):
        db = tmp_path / name
        open_store(f"sqlite:///{db}").close()               # creates it (four slashes)
        ro = connect(Path("/" + str(db)), readonly=True)     # a leading "//" as well
        assert ro.execute("SELECT count(*) FROM entries").fetchone() == (0,)
        ro.close()


def test_bad_schemes_are_named() -> None:
    with pytest.raises(LedgerError, match="use sqlite:///absolute/path"):
        sqlite_path("sqlite://host/x.db")
    with pytest.raises(LedgerError, match="unknown store URL scheme"):
        sqlite_path("mysql://x")
