"""The memory budget for spooled messages: bytes granted in arrival order, never more than
the total at once, a message larger than the budget alone, and nothing leaked on cancel."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from milter.spool import MemoryBudget, Spooled


async def _run(budget: MemoryBudget, name: str, n: int, log: list[str],
               gate: asyncio.Event) -> None:
    async with budget.reserve(n):
        log.append(f"+{name}")
        await gate.wait()
        log.append(f"-{name}")


def test_budget_grants_in_order_and_never_overcommits() -> None:
    async def main() -> list[str]:
        budget = MemoryBudget(100)
        log: list[str] = []
        gates = {k: asyncio.Event() for k in "abcd"}
        a = asyncio.create_task(_run(budget, "a", 60, log, gates["a"]))
        await asyncio.sleep(0)
        b = asyncio.create_task(_run(budget, "b", 500, log, gates["b"]))  # larger than all
        await asyncio.sleep(0)
        c = asyncio.create_task(_run(budget, "c", 10, log, gates["c"]))   # fits, but waits
        await asyncio.sleep(0.01)
        assert log == ["+a"] and budget.free == 40
        gates["a"].set()
        await asyncio.sleep(0.01)
        assert log == ["+a", "-a", "+b"] and budget.free == 0
        gates["b"].set()
        gates["c"].set()
        await asyncio.gather(a, b, c)
        assert budget.free == 100
        return log

    assert asyncio.run(main()) == ["+a", "-a", "+b", "-b", "+c", "-c"]


def test_cancelled_waiter_gives_nothing_away() -> None:
    async def main() -> None:
        budget = MemoryBudget(100)
        log: list[str] = []
        gate = asyncio.Event()
        a = asyncio.create_task(_run(budget, "a", 100, log, gate))
        await asyncio.sleep(0)
        b = asyncio.create_task(_run(budget, "b", 50, log, asyncio.Event()))
        c = asyncio.create_task(_run(budget, "c", 50, log, gate))
        await asyncio.sleep(0.01)
        b.cancel()              # a client that hangs up while waiting
        gate.set()
        await asyncio.gather(a, c)
        assert "+b" not in log and budget.free == 100

    asyncio.run(main())


def test_spooled_file_reads_back_and_leaves_nothing(tmp_path: Path) -> None:
    with contextlib.closing(Spooled(tmp_path / "spool")) as spool:
        spool.write(b"abc")
        spool.write(memoryview(b"defg"))
        assert spool.read() == b"abcdefg" and spool.size == 7
    assert list((tmp_path / "spool").iterdir()) == []
