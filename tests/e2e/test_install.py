"""`pip install .` (a wheel, not the source tree) then `skot-milter serve` in an empty folder.

The wheel is built from this checkout without network (``--no-build-isolation``: the test
extras bring setuptools and wheel), installed with ``--no-deps`` into a fresh venv that sees the
test venv's dependencies through a path entry (not its ``.pth`` files, so the editable install
of this checkout stays invisible), and run from an empty directory with no config anywhere.
"""

from __future__ import annotations

import os
import site
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_message


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel of this checkout installed; its ``bin``."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "dist").glob("skot_milter-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    pure = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (aiosmtpd, ...) come from the test venv, appended after the venv's own.
    Path(pure, "zz-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return venv / "bin"


def test_the_wheel_serves_a_message_from_an_empty_folder(installed: Path,
                                                          tmp_path: Path) -> None:
    site = Path("/etc/skot-milter/skot-milter.toml")
    if site.exists():
        pytest.fail(f"{site} exists on this machine: the installed command would use "
                    "it; this test needs a machine without a site config")
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SKOT_MILTER_CONFIG", "PYTHONPATH")}
    where = subprocess.run([str(installed / "python"), "-c",
                            "import milter; print(milter.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed.parent)), where  # the wheel, not this checkout
    # The bundled defaults listen on 127.0.0.1:10025; port 0 keeps parallel runs apart.
    proc = subprocess.Popen([str(installed / "skot-milter"), "serve", "--listen",
                             "127.0.0.1:0"], cwd=folder, env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        log = _wait_ready(proc)
        assert "bundled defaults" in log
        port = int(log.split("SMTP port ")[1].split(",")[0])
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("someone@school.example", ["ouder@example.org"], make_message(
                frm="someone@school.example", to="ouder@example.org"))
            with pytest.raises(smtplib.SMTPException) as refused:
                s.sendmail("me@gmail.example", ["ouder@example.org"],
                           make_message(frm="me@gmail.example", to="ouder@example.org"))
            assert "B1.sender-domain" in str(refused.value)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    delivered = list((folder / "var" / "maildir" / "new").iterdir())
    assert len(delivered) == 1 and b"Subject: Hallo" in delivered[0].read_bytes()
    listing = subprocess.run([str(installed / "skot-milter"), "audit", "list"], cwd=folder,
                             env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "B1.sender-domain" in listing.stdout
    assert "bundled defaults" in listing.stderr


def _wait_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "ready" in line:
            return "".join(lines)
    raise AssertionError("serve did not start:\n" + "".join(lines))
