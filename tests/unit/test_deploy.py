"""The shipped example production config stays valid (an admin copies it first)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from milter.cli import main
from tests.conftest import ROOT


def test_example_config_passes_config_check_once_init_wrote_the_site(tmp_path: Path,
                                                                    capsys: Any) -> None:
    """The example is what ``init`` writes; with the example's staff list it checks clean."""
    state = tmp_path / "state"
    assert main(["init", str(tmp_path), "--domain", "school.example", "--domain",
                 "leerling.school.example", "--state-dir", str(state)]) == 0
    written = (tmp_path / "skot-milter.toml").read_text()
    example = (ROOT / "deploy" / "example" / "skot-milter.toml").read_text()
    assert written == example.replace("/var/lib/skot-milter", str(state)).replace(
        'name = "Basisschool De Voorbeeld"\n', "")
    shutil.copy(ROOT / "deploy" / "example" / "staff.csv", tmp_path / "staff.csv")
    capsys.readouterr()
    assert main(["config", "check", "--config", str(tmp_path / "skot-milter.toml")]) == 0
    assert "config ok" in capsys.readouterr().out


def test_systemd_unit_reloads_with_sighup_and_is_hardened() -> None:
    unit = (ROOT / "deploy" / "systemd" / "skot-milter.service").read_text()
    for line in ("ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "User=skot-milter", "StateDirectory=skot-milter"):
        assert line in unit


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """A newcomer's two set-up commands are in README.md; CI must run the test one as is."""
    import re

    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    setup = [b for b in blocks if b.startswith("python3 -m venv .venv")]
    assert len(setup) == 2 and setup[0].endswith("skot-milter serve")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup[1] in ci and setup[1].endswith("-m pytest")
