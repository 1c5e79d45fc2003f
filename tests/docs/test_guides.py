"""The role guides (docs/guides/*.md, issue 16 item 4) name only commands, options and endpoints
that exist: every command line of their ``sh``/``bash`` blocks that starts with one of our
programs is parsed by that program's real argparse parser (nothing is run), and every
``GET|POST|PUT|DELETE /v1/...`` (or ``/console/...``, ``/auth/...``) they mention must be a
route of collector.api.routes.ROUTES with that method. A guide that drifts from the code fails
here, naming the guide, its line and argparse's own error. The checker itself is tested on tiny
synthetic guides, so it can fail.

Rules of the extraction (kept simple on purpose, and stated in docs/guides/README.md):
backslash continuations are joined; the line is split like a POSIX shell (quotes, ``#``
comments) and cut at the first shell operator (``|``, ``>``, ``&&``, ``;``, ...); ``$(...)``
substitutions become one word; a leading ``sudo`` is dropped. A command line holding a
``<placeholder>`` is an error, not a skip: the guides use concrete example values, so that every
line is checked (none is skipped).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from agent.cli import build_parser as agent_parser
from collector.api.routes import ROUTES
from collector.cli.main import build_parser as collector_parser
from wire.verify_cli import _parser as verify_parser
from witness.cli import _parser as witness_parser

REPO = Path(__file__).resolve().parents[2]
GUIDES = REPO / "docs" / "guides"
ROLE_GUIDES = ("hr-officer.md", "supervisor.md", "payroll-integrator.md", "auditor.md", "ops.md")

PROGRAMS = ("timeclock-collector", "timeclock-agent", "timeclock-verify", "timeclock-witness")
FENCE_OPEN = re.compile(r"^\s*```(?P<info>[^`]*)$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
SHELL_INFOS = frozenset({"sh", "bash"})
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>")
SUBSTITUTION = re.compile(r"\$\([^()]*\)")
OPERATORS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "2>&1", "(", ")"})
ENDPOINT = re.compile(r"\b(GET|POST|PUT|DELETE) (/(?:v1|console|auth)/[^\s`'\"()\[\]<>,;]*)")


class GuideError(AssertionError):
    """A guide names a command line or an endpoint that does not exist."""


@dataclass(frozen=True)
class CommandLine:
    source: str      # the guide's path, as shown in errors
    line: int        # 1-based line of the command's first physical line
    text: str        # the joined logical line


class _ParseError(Exception):
    pass


def _raise(message: str) -> NoReturn:
    raise _ParseError(message)


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and every sub-parser raise _ParseError instead of printing and exiting."""
    def error(message: str) -> NoReturn:
        _raise(f"{parser.prog}: error: {message}")

    def exit_(status: int = 0, message: str | None = None) -> NoReturn:
        _raise(f"{parser.prog}: exits ({status}) {message or ''}".rstrip())

    parser.error = error        # type: ignore[method-assign]  # an instance override is the hook
    parser.exit = exit_         # type: ignore[method-assign]  # --help would exit the test
    for action in parser._actions:  # noqa: SLF001  # argparse keeps sub-parsers nowhere public
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    return {"timeclock-collector": collector_parser, "timeclock-agent": agent_parser,
            "timeclock-verify": verify_parser, "timeclock-witness": witness_parser}


def shell_lines(markdown: str, source: str) -> Iterator[tuple[int, str]]:
    """(line, logical line) of every ``sh``/``bash`` fenced block, continuations joined."""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        info = m.group("info").strip().split()
        start = i
        i += 1
        body: list[tuple[int, str]] = []
        while i < len(lines) and not FENCE_CLOSE.match(lines[i]):
            body.append((i + 1, lines[i]))
            i += 1
        if i == len(lines):
            raise GuideError(f"{source}:{start + 1}: code block is never closed")
        i += 1
        if not info or info[0] not in SHELL_INFOS:
            continue
        j = 0
        while j < len(body):
            first, text = body[j]
            while text.endswith("\\") and j + 1 < len(body):
                j += 1
                text = text[:-1] + " " + body[j][1].strip()
            yield first, text
            j += 1


def commands(markdown: str, source: str) -> list[CommandLine]:
    """The logical lines of shell blocks that start with one of PROGRAMS (after ``sudo``)."""
    found = []
    for line, text in shell_lines(markdown, source):
        stripped = text.strip().removeprefix("sudo ").lstrip()
        if stripped.split(" ", 1)[0] in PROGRAMS:
            found.append(CommandLine(source, line, stripped))
    return found


def argv_of(cmd: CommandLine) -> list[str]:
    if (ph := PLACEHOLDER.search(cmd.text)) is not None:
        raise GuideError(f"{cmd.source}:{cmd.line}: placeholder {ph.group(0)} in a command "
                         f"line; use a concrete example value: {cmd.text}")
    text = SUBSTITUTION.sub("SUBSTITUTED", cmd.text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError as e:
        raise GuideError(f"{cmd.source}:{cmd.line}: not a shell line ({e}): {cmd.text}") from e
    argv: list[str] = []
    for w in words:
        if w in OPERATORS or (w and set(w) <= set("|&;<>()")):
            break
        argv.append(w)
    return argv


def check_command(cmd: CommandLine,
                  parsers: dict[str, Callable[[], argparse.ArgumentParser]]) -> None:
    argv = argv_of(cmd)
    parser = parsers[argv[0]]()
    try:
        parser.parse_args(argv[1:])
    except _ParseError as e:
        raise GuideError(f"{cmd.source}:{cmd.line}: {e}\n    {cmd.text}") from None


def _route_patterns() -> dict[str, list[re.Pattern[str]]]:
    table: dict[str, list[re.Pattern[str]]] = {}
    for r in ROUTES:
        parts = re.split(r"(\{[^}]+\})", r.path)
        rx = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        table.setdefault(r.method, []).append(re.compile(rx + "/?"))
    return table


def endpoints(markdown: str, source: str) -> list[tuple[int, str, str]]:
    """(line, method, path) of every ``METHOD /v1/...`` mention, query and punctuation cut."""
    found = []
    for n, line in enumerate(markdown.splitlines(), 1):
        for m in ENDPOINT.finditer(line):
            path = m.group(2).split("?", 1)[0].rstrip(".:")
            found.append((n, m.group(1), path))
    return found


def check_endpoint(source: str, line: int, method: str, path: str,
                   table: dict[str, list[re.Pattern[str]]]) -> None:
    if not any(p.fullmatch(path) for p in table.get(method, [])):
        raise GuideError(f"{source}:{line}: {method} {path} is no route of "
                         "collector.api.routes.ROUTES")


def check_guide(markdown: str, source: str) -> tuple[int, int]:
    """Every problem of one guide at once (GuideError); else (commands, endpoints) checked."""
    builders, table = _parsers(), _route_patterns()
    built: dict[str, argparse.ArgumentParser] = {}

    def parser_of(program: str) -> Callable[[], argparse.ArgumentParser]:
        def build() -> argparse.ArgumentParser:      # each program's parser once per guide
            if program not in built:
                built[program] = _strict(builders[program]())
            return built[program]
        return build

    parsers = {program: parser_of(program) for program in builders}
    problems: list[str] = []
    cmds = commands(markdown, source)
    for cmd in cmds:
        try:
            check_command(cmd, parsers)
        except GuideError as e:
            problems.append(str(e))
    eps = endpoints(markdown, source)
    for line, method, path in eps:
        try:
            check_endpoint(source, line, method, path, table)
        except GuideError as e:
            problems.append(str(e))
    if problems:
        raise GuideError("\n".join(problems))
    return len(cmds), len(eps)


# --- the guides themselves ------------------------------------------------------------------

def _guides() -> list[Path]:
    return sorted(GUIDES.glob("*.md"))


def test_every_role_has_a_guide_and_the_readme_points_at_each() -> None:
    present = {p.name for p in _guides()}
    assert {*ROLE_GUIDES, "README.md"} <= present, sorted(present)
    readme = (GUIDES / "README.md").read_text(encoding="utf-8")
    missing = [g for g in sorted(present - {"README.md"}) if f"]({g})" not in readme]
    assert missing == [], f"docs/guides/README.md does not link {missing}"


@pytest.mark.parametrize("name", ROLE_GUIDES)
def test_guide_commands_parse_and_endpoints_exist(name: str) -> None:
    path = GUIDES / name
    n_cmds, n_eps = check_guide(path.read_text(encoding="utf-8"), f"docs/guides/{name}")
    assert n_cmds + n_eps >= 5, (f"docs/guides/{name}: only {n_cmds} command lines and "
                                 f"{n_eps} endpoints: nothing much is checked")


def test_readme_commands_parse_and_endpoints_exist() -> None:
    check_guide((GUIDES / "README.md").read_text(encoding="utf-8"), "docs/guides/README.md")


# --- the checker, on synthetic guides --------------------------------------------------------

GOOD = """\
# A guide

```sh
sudo timeclock-collector people import --store ledger.db --employees staff.csv \\
    --badges badges.csv --dry-run    # a comment
timeclock-collector backup --store ledger.db --key /k \\
    --out /b/ledger-$(date -u +%F).tcbak
timeclock-verify ./bundle --collector-key QUJD --witness-policy p.txt | tee out.txt
timeclock-agent status --config /etc/timeclock/agent.toml --json > s.json
timeclock-witness vkey --config w.toml && echo done
curl https://collector:8443/v1/timesheets    # not one of ours: not parsed
```

```toml
timeclock-collector not a shell block, so never parsed
```

Call `GET /v1/corrections/cor-1a2b` or `POST /v1/corrections/{id}/approve`, then
GET /v1/timesheets?since=2026-11-01T00:00Z. Keep people with `PUT /v1/people/E1001`.
"""


def test_checker_accepts_a_good_guide_and_counts_what_it_checked() -> None:
    assert check_guide(GOOD, "good.md") == (5, 4)


def test_checker_joins_continuations_and_keeps_the_first_line() -> None:
    cmds = commands(GOOD, "good.md")
    assert [c.line for c in cmds] == [4, 6, 8, 9, 10]
    assert argv_of(cmds[0])[-1] == "--dry-run"
    assert argv_of(cmds[2])[-1] == "p.txt"


@pytest.mark.parametrize(("doc", "error"), [
    ("```sh\ntimeclock-collector timesheet --store s --from 2026-11-01T00:00Z\n```\n",
     r"x\.md:2: timeclock-collector timesheet: error: the following arguments are required: "
     r"--to"),
    ("```bash\ntimeclock-collector people import --store s \\\n  --employes staff.csv\n```\n",
     r"x\.md:2: timeclock-collector: error: unrecognized arguments: --employes staff\.csv"),
    ("```sh\ntimeclock-collector badge misplace --store s em4100:1\n```\n",
     r"x\.md:2: .*invalid choice: 'misplace'"),
    ("```sh\ntimeclock-verify --export payroll.ndjson --quorum two\n```\n",
     r"x\.md:2: timeclock-verify: error: argument --quorum: invalid int value: 'two'"),
    ("```sh\ntimeclock-agent status --help\n```\n", r"x\.md:2: timeclock-agent status: exits"),
    ("```sh\ntimeclock-verify ./b --collector-key <B64>\n```\n",
     r"x\.md:2: placeholder <B64> in a command line"),
    ("Ask `GET /v1/timesheet?since=1` first.\n",
     r"x\.md:1: GET /v1/timesheet is no route"),
    ("then `DELETE /v1/corrections/cor-1`\n", r"x\.md:1: DELETE /v1/corrections/cor-1 is no"),
    ("the page `GET /console/payroll`\n", r"x\.md:1: GET /console/payroll is no route"),
    ("```sh\ntimeclock-collector token list\n", r"x\.md:1: code block is never closed"),
])
def test_checker_fails_naming_guide_line_and_the_error(doc: str, error: str) -> None:
    with pytest.raises(GuideError, match=error):
        check_guide(doc, "x.md")


def test_checker_reports_every_problem_of_a_guide_at_once() -> None:
    doc = ("```sh\ntimeclock-collector token lisst --store s\n"
           "timeclock-collector people show --store s\n```\nPUT /v1/punches\n")
    with pytest.raises(GuideError) as e:
        check_guide(doc, "x.md")
    assert [ln.split(": ", 1)[0] for ln in str(e.value).splitlines()
            if ln.startswith("x.md")] == ["x.md:2", "x.md:3", "x.md:5"]
