"""The layers hold: a pure core, fronts that only the daemon wires, config read into typed
sections that the example config documents key for key."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from milter import config
from tests.conftest import ROOT

PACKAGE = ROOT / "milter"
IO_MODULES = {"socket", "ssl", "dns", "dkim", "asyncio", "psycopg", "sqlite3"}


def _loaded_io(statement: str) -> set[str]:
    code = (f"{statement}\nimport sys\n"
            f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(IO_MODULES)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return set(out.split())


def test_the_core_loads_no_io_modules() -> None:
    """What `import milter.core.engine` loads beyond the standard library's own email
    package (whose email.utils imports socket for make_msgid) is no I/O at all."""
    stdlib_email = _loaded_io("import email.parser, email.policy, email.message, "
                              "email.headerregistry, email.utils")
    core = _loaded_io("import milter.core.engine, milter.core.message, milter.rules, "
                      "milter.inspect")
    assert core - stdlib_email == set()
    assert not {"asyncio", "ssl", "dns", "dkim", "sqlite3", "psycopg"} & {
        m.split(".")[0] for m in core}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_only_the_daemon_imports_a_front() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("milter/fronts/") or rel == "milter/daemon.py":
            continue
        if any(name.startswith("milter.fronts") for name in _imports(path)):
            offenders.append(rel)
    assert offenders == []


def test_web_and_commands_import_neither_a_front_nor_the_cli() -> None:
    for folder in ("web", "commands"):
        for path in (PACKAGE / folder).rglob("*.py"):
            names = _imports(path)
            assert not any(n.startswith("milter.fronts") for n in names), path
            if folder == "web":
                assert not any(n.startswith(("milter.commands", "milter.cli"))
                               for n in names), path


def test_core_rules_and_inspect_do_not_import_adapters() -> None:
    adapters = ("milter.audit", "milter.transaction", "milter.daemon", "milter.nexthop",
                "milter.dnsauth", "milter.notices", "milter.quarantine", "milter.spool",
                "milter.web", "milter.commands")
    for folder in ("core", "rules", "inspect"):
        for path in (PACKAGE / folder).rglob("*.py"):
            bad = [n for n in _imports(path) if n.startswith(adapters)]
            assert bad == [], (path, bad)


def test_typed_sections_match_the_schema() -> None:
    for section, keys in config.SCHEMA.items():
        assert tuple(keys) == config.section_fields(section), section
        assert section in {f.name for f in fields(config.Config)}


def test_the_example_config_documents_every_key() -> None:
    text = (ROOT / "deploy" / "example" / "skot-milter.toml").read_text()
    sections = dict.fromkeys(re.findall(r"^\[(\w+)\]", text, re.M))
    assert list(sections) == [s for s in sections if s in config.SCHEMA]
    missing = [f"{section}.{key}" for section, keys in config.SCHEMA.items() for key in keys
               if not re.search(rf"^#? ?{key} = ", text, re.M)
               and not re.search(rf"^#? ?\[{section}\.{key}\]", text, re.M)]  # a table
    assert missing == []
    assert set(sections) == set(config.SCHEMA)
    config.load(ROOT / "deploy" / "example" / "skot-milter.toml")  # and it is valid


def test_a_misspelt_key_is_a_type_error(tmp_path: Path) -> None:
    """Config sections are typed: mypy catches `cfg.gateway.hostnme`."""
    probe = tmp_path / "probe_typo.py"
    probe.write_text("from milter.config import Config\n\n\n"
                     "def f(cfg: Config) -> str:\n    return cfg.gateway.hostnme\n\n\n"
                     "def g(cfg: Config) -> str:\n    return cfg.gateway.hostname\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                          "--cache-dir", str(tmp_path / "cache"), str(probe)],
                         capture_output=True, text=True, cwd=ROOT).stdout
    assert 'has no attribute "hostnme"' in out
    assert {line.split(":")[1] for line in out.splitlines() if ": error:" in line} == {"5"}
