"""Durable replacement of a file that several writers replace at once (the workers of one
gateway each write the same stop checkpoint when they stop)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from milter.durable import replace_synced


def test_writers_replacing_one_file_at_once_leave_one_whole_version(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint-test-000000000024-stop.json"
    versions = [json.dumps({"writer": i, "pad": str(i) * 20000}).encode() for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(versions))

    def write(data: bytes) -> None:
        try:
            start.wait()
            for _ in range(20):
                replace_synced(target, data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in versions  # whole, one writer's, parseable
    assert json.loads(target.read_bytes())["writer"] in range(8)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left
