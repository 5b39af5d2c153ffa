"""A configuration error at start is said once and is exit 2, whatever the number of workers:
never a traceback per worker restart while Postfix tempfails all mail (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_config
from tests.e2e.conftest import free_port


@pytest.mark.parametrize("workers", [1, 0, 3])
def test_a_missing_key_stops_serve_once_with_exit_2(tmp_path: Path, workers: int) -> None:
    cfg = write_config(tmp_path, listen=f"127.0.0.1:{free_port()}",
                       gateway_extra=f"workers = {workers}")
    # The example config's key, which no step had written (the crash loop).
    cfg.write_text(cfg.read_text().replace('url = "sqlite:///audit.sqlite3"',
                                           'url = "sqlite:///audit.sqlite3"\n'
                                           'checkpoint_key = "keys/epoch-1.key"\n'
                                           'checkpoint_dir = "checkpoints"'))
    proc = subprocess.run([sys.executable, "-m", "milter.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("audit.checkpoint_key") == 1, proc.stderr
    assert "fix: skot-milter audit keygen --epoch 1" in proc.stderr
    assert "Traceback" not in proc.stderr and "ready" not in proc.stderr


def test_the_unit_does_not_restart_on_a_configuration_error() -> None:
    unit = (ROOT / "deploy" / "systemd" / "skot-milter.service").read_text()
    assert "RestartPreventExitStatus=2" in unit.splitlines()


SUPERVISE = """
import asyncio, sys
from milter import config, supervisor
from milter.config import ConfigError

async def serve(cfg, worker=0, reuse_port=False):
    if worker == 1:
        raise ConfigError(cfg.path, "gateway.tls_cert", "changed after the start check")
    await asyncio.sleep(60)   # the healthy worker, until the supervisor stops it
    return 0

supervisor.serve = serve
cfg = config.load(sys.argv[1])
print("exit", supervisor.supervise(cfg), flush=True)
"""


def test_a_worker_with_a_configuration_error_stops_all_workers_once(tmp_path: Path) -> None:
    """A file changed between the start check and a worker's start: the supervisor stops
    every worker and exits 2 instead of replacing the failing one forever."""
    cfg = write_config(tmp_path, gateway_extra="workers = 3")
    script = tmp_path / "supervise.py"
    script.write_text(SUPERVISE)
    proc = subprocess.run([sys.executable, str(script), str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.stdout.strip() == "exit 2", proc.stdout + proc.stderr
    assert proc.stderr.count("changed after the start check") == 1, proc.stderr
    assert "starting a new one" not in proc.stderr
