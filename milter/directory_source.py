"""Where the directory comes from, and keeping it fresh without touching the message path.

``[directory] source = "csv"`` (the default) reads a file when the runtime is (re)loaded, as
before. ``source = "ldap"`` reads the directory server in the background: at start, every
``refresh_minutes`` and on SIGHUP, in a worker thread. Each good copy is handed to the running
gateway and saved to ``<state>/directory-cache.json`` (mode 0600: it holds personal data), so a
restart while the directory server is down starts with the last good copy. A failed refresh
keeps the copy in use, logs how old it is and counts in the metrics; it never names a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from milter import directory as directory_mod
from milter import directory_ldap
from milter.config import Config
from milter.directory import EMPTY, Directory, Person, RoleMap

log = logging.getLogger("skot-milter")
CACHE_NAME = "directory-cache.json"
CACHE_VERSION = 1


def role_map(cfg: Config) -> RoleMap:
    return RoleMap(roles=cfg.directory.roles, groups=cfg.directory.groups,
                   private=cfg.directory.private_addresses)


def ldap_settings(cfg: Config) -> directory_ldap.LdapSettings:
    """The validated ``[directory.ldap]`` table, files resolved against the config file."""
    s = cfg.directory.ldap
    if s is None:  # config validation requires the table with source = "ldap"
        raise ValueError("directory.ldap is not configured")
    return replace(s, ca_file=str(cfg.resolve(s.ca_file)) if s.ca_file else "",
                   bind_password_file=str(cfg.resolve(s.bind_password_file))
                   if s.bind_password_file else "")


def describe_age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def counts_text(d: Directory) -> str:
    counts = d.role_counts()
    return f"{sum(counts.values())} people (" + ", ".join(
        f"{r} {n}" for r, n in counts.items()) + ")"


@dataclass
class DirectorySource:
    """The directory of one config: the copy in use, its age, and the background refresh.

    ``refresh()`` blocks (network); ``start()`` runs it in a thread on an interval and when
    ``trigger()`` is called (SIGHUP), handing each good copy to ``on_new`` on the loop."""

    config: Config
    fetched_at: float = 0.0            # time.time() of the copy in use; 0 = none yet
    failures: int = 0
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event | None = None

    @property
    def kind(self) -> str:
        return str(self.config.directory.source)

    @property
    def cache_path(self) -> Path:
        return self.config.state_dir / CACHE_NAME

    @property
    def interval(self) -> float:
        return float(self.config.directory.refresh_minutes) * 60.0

    # --- reading -------------------------------------------------------------------------
    def fetch(self) -> Directory:
        """One read of the source (blocking); ``DirectoryError``/``LdapError`` on failure."""
        if self.kind == "ldap":
            return directory_ldap.fetch(ldap_settings(self.config), role_map(self.config))
        return directory_mod.load(self.config.directory_path, role_map(self.config))

    def initial(self) -> Directory:
        """What the runtime starts with, without the network: the CSV, or for LDAP the last
        good copy on disk (empty, with an error logged, when there is none yet)."""
        if self.kind != "ldap":
            return self.fetch()
        cached = self.load_cached()
        if cached is None:
            log.error("directory: no saved copy of the LDAP directory yet (%s); starting "
                      "with an empty one until the first refresh succeeds", self.cache_path)
            return EMPTY
        return cached

    def refresh(self) -> Directory:
        """Fetch, save the copy to disk, note its time. Raises on failure (caller keeps the
        copy it has)."""
        directory = self.fetch()
        now = time.time()
        if self.kind == "ldap":
            try:
                self.save_cache(directory, now)
            except OSError as exc:  # still use it; a restart with the server down won't
                log.error("directory: cannot save the copy to %s: %s", self.cache_path,
                          exc.strerror)
        self.fetched_at, self.failures = now, 0
        _metrics_success(now)
        return directory

    # --- the copy on disk ----------------------------------------------------------------
    def save_cache(self, directory: Directory, when: float) -> None:
        from milter.durable import replace_synced

        people = list({id(p): p for p in directory.people.values()}.values())
        data = {"version": CACHE_VERSION, "source": self.kind, "fetched_at": when,
                "people": [asdict(p) for p in people]}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        replace_synced(self.cache_path, json.dumps(data, ensure_ascii=False).encode(), 0o600)

    def _read_cache(self) -> tuple[list[Person], float] | None:
        try:
            data = json.loads(self.cache_path.read_bytes())
            if data.get("version") != CACHE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return [_person(p) for p in data["people"]], float(data["fetched_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("directory: saved copy %s unreadable (%s); ignoring it", self.cache_path,
                      type(exc).__name__)
            return None

    def adopt_cached_time(self) -> None:
        """The runtime started from the saved copy: its age is the one to report."""
        cached = self._read_cache()
        if cached is not None and not self.fetched_at:
            self.fetched_at = cached[1]

    def load_cached(self) -> Directory | None:
        """The last good copy from disk, or None (missing or unreadable: logged)."""
        cached = self._read_cache()
        if cached is None:
            return None
        people, when = cached
        self.fetched_at = when
        _metrics_success(when)
        log.info("directory: using the saved copy from %s (age %s): %d people",
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)),
                 describe_age(time.time() - when), len(people))
        return Directory.from_people(people)

    # --- the background refresh ----------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop,
              on_new: Callable[[Directory], None]) -> None:
        """Refresh now, then every ``refresh_minutes`` and on ``trigger()``; LDAP only (a CSV
        is re-read on SIGHUP with the rest of the config)."""
        if self.kind != "ldap" or self._task is not None:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(on_new))

    def trigger(self) -> None:
        """Refresh soon (SIGHUP); returns at once."""
        if self._wake is not None:
            self._wake.set()

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: the next refresh uses its settings."""
        self.config = config

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, on_new: Callable[[Directory], None]) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                directory = await loop.run_in_executor(None, self.refresh)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure keeps the last good copy
                self._failed(exc)
            else:
                log.info("directory: refreshed from %s: %s", self.kind, counts_text(directory))
                on_new(directory)
            # After a failure, retry sooner than the interval (but not in a tight loop).
            wait = self.interval if self.failures == 0 else min(self.interval, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _failed(self, exc: Exception) -> None:
        from milter import metrics

        self.failures += 1
        metrics.DIRECTORY_REFRESH_FAILURES.inc()
        reason = str(exc) if isinstance(exc, directory_ldap.LdapError | directory_mod.
                                        DirectoryError) else type(exc).__name__
        if self.fetched_at:
            age = time.time() - self.fetched_at
            metrics.DIRECTORY_AGE_SECONDS.set(age)
            log.error("directory: refresh from %s failed (%s); keeping the copy from %s "
                      "(age %s)", self.kind, reason,
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.fetched_at)),
                      describe_age(age))
        else:
            log.error("directory: refresh from %s failed (%s); no good copy yet, the "
                      "directory is empty", self.kind, reason)


def _person(p: Any) -> Person:
    if not isinstance(p, dict) or not isinstance(p.get("address"), str):
        raise ValueError("person")
    def text(key: str) -> str:
        v = p.get(key, "")
        if not isinstance(v, str):
            raise ValueError(key)
        return v

    def texts(key: str) -> tuple[str, ...]:
        v = p.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(key)
        return tuple(v)

    return Person(address=text("address"), role=text("role"), name=text("name"),
                  private_addresses=texts("private_addresses"), supervisor=text("supervisor"),
                  language=text("language"), groups=texts("groups"), aliases=texts("aliases"))


def _metrics_success(when: float) -> None:
    from milter import metrics

    metrics.DIRECTORY_FETCHED_TIMESTAMP.set(when)
    metrics.DIRECTORY_AGE_SECONDS.set(max(time.time() - when, 0.0))


@dataclass
class LiveDirectory:
    """A running gateway's directory source: new copies go into the runtime it serves."""

    source: DirectorySource
    running: Any                       # milter.daemon.Running (not imported: no cycle)
    loop: asyncio.AbstractEventLoop

    def use(self, directory: Directory) -> None:
        """A fresh copy: new transactions get it; those in flight keep theirs."""
        gw = self.running.gateway
        gw.runtime = replace(gw.runtime, directory=directory)
        if gw.notifier is not None:
            gw.notifier.directory = directory

    def on_sighup(self, reload: Callable[[Any, str | None], bool], running: Any,
                  config_path: str | None) -> None:
        """SIGHUP: reload the config as before (LDAP: from the saved copy, at once), then
        read the directory again in the background."""
        if reload(running, config_path):
            self.source.reconfigure(running.gateway.runtime.config)
            self.source.start(self.loop, self.use)
        self.source.trigger()


def serve(running: Any, loop: asyncio.AbstractEventLoop) -> LiveDirectory:
    """Start the background refresh for a running gateway (a no-op for a CSV directory)."""
    served = LiveDirectory(DirectorySource(running.gateway.runtime.config), running, loop)
    if served.source.kind == "ldap":
        served.source.adopt_cached_time()
    served.source.start(loop, served.use)
    return served
