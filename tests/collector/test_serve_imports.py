"""``serve`` of a collector without ``[api]`` loads no web stack: aiohttp is imported only
when ``[api]`` is configured (collector.api.config holds the section, collector.api is light).

Each case runs in a fresh interpreter (``python -c``), so modules other tests imported do not
hide an eager import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.collector.punch_kit import write_collector_config
from tests.fixtures.mosquitto import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]

# The serve path up to the point where it would connect: parse the CLI, load and check the
# config, build the service (nothing connects before start()).
PROBE = """
import json, sys
from pathlib import Path
from collector.cli.main import build_parser, main
from collector.service.config import load_config
from collector.service.runner import CollectorService
import collector.cli.serve
cfg_file = Path(sys.argv[1])
rc = main(["serve", "--check-config", str(cfg_file)])
cfg = load_config(cfg_file)
CollectorService(cfg)
print(json.dumps({"rc": rc, "api": cfg.api is not None,
                  "aiohttp": sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp")[:3],
                  "app": "collector.api.app" in sys.modules}))
"""


def _probe(cfg_file: Path, extra: str = "") -> dict[str, object]:
    r = subprocess.run([sys.executable, "-c", PROBE + extra, str(cfg_file)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.subprocess
def test_serve_without_api_imports_no_aiohttp(tmp_path: Path,
                                              mosquitto: MosquittoBroker) -> None:
    cfg_file, _ = write_collector_config(tmp_path, mosquitto,
                                         store_url=f"sqlite://{tmp_path / 'ledger.db'}")
    assert _probe(cfg_file) == {"rc": 0, "api": False, "aiohttp": [], "app": False}


@pytest.mark.subprocess
@pytest.mark.parametrize("with_app", [False, True], ids=["config-only", "app-imported"])
def test_the_api_section_alone_imports_no_aiohttp_but_the_app_does(
        tmp_path: Path, mosquitto: MosquittoBroker, with_app: bool) -> None:
    pki = mosquitto.pki
    cfg_file, _ = write_collector_config(
        tmp_path, mosquitto, store_url=f"sqlite://{tmp_path / 'ledger.db'}",
        extra=f'[api]\ncert = "{pki.server_cert_file}"\nkey = "{pki.server_key_file}"\n')
    # What serve does once [api] is configured; it proves the probe would see aiohttp.
    extra = "import collector.api.app\nprint(json.dumps({'aiohttp': 'aiohttp' in sys.modules}))\n"
    got = _probe(cfg_file, extra if with_app else "")
    if with_app:
        assert got == {"aiohttp": True}
    else:
        assert got == {"rc": 0, "api": True, "aiohttp": [], "app": False}
