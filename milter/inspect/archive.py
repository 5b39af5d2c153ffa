"""ZIP archives, bounded: members, depth, expanded bytes, ratio, overlapping entries.

Python 3.11's zipfile lacks the overlapping-entry bomb check (gh-109858), so entries are
checked for overlap here before anything is decompressed, and every member is read through a
byte cap rather than trusting the sizes the archive declares.
"""

from __future__ import annotations

import contextlib
import io
import zipfile

from milter.inspect import Budget, Item

CHUNK = 1 << 16


def _overlapping(infos: list[zipfile.ZipInfo]) -> bool:
    spans = sorted((i.header_offset, i.header_offset + 30 + len(i.filename.encode())
                    + i.compress_size) for i in infos)
    return any(end > nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False))


def read_zip(item: Item, data: bytes, budget: Budget, depth: int, items: list[Item],
             opened: zipfile.ZipFile | None = None) -> None:
    """``opened``: the archive as the type sniffer opened it (the caller's to close)."""
    from milter.inspect.readers import read_bytes

    limits = budget.limits
    if depth >= limits.max_depth:
        item.uninspectable = f"archive nested deeper than {limits.max_depth} levels"
        return
    if opened is not None:
        zf = opened
    else:
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError) as exc:
            item.uninspectable = f"damaged ZIP archive ({exc})"
            return
    with contextlib.nullcontext(zf) if opened is not None else zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > limits.max_members:
            item.uninspectable = f"archive has more than {limits.max_members} members"
            return
        if _overlapping(infos):
            item.uninspectable = "archive with overlapping entries (zip bomb)"
            return
        names = []
        for info in infos:
            names.append(info.filename)
            if info.flag_bits & 0x1:
                item.uninspectable = f"encrypted archive member {info.filename!r}"
                return
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                item.uninspectable = f"archive member expands more than {limits.max_ratio}x"
                return
            if not budget.time_left():
                item.uninspectable = "inspection time budget exhausted"
                return
            cap = limits.max_expanded_bytes - budget.expanded
            buf = bytearray()
            try:
                with zf.open(info) as fh:
                    while chunk := fh.read(CHUNK):
                        buf += chunk
                        if len(buf) > cap or len(buf) > limits.max_ratio * max(
                                info.compress_size, CHUNK):
                            item.uninspectable = "archive expands past the inspection limit"
                            return
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
                item.uninspectable = f"damaged archive member {info.filename!r} ({exc})"
                return
            if not budget.take(len(buf)):
                item.uninspectable = "archive expands past the inspection limit"
                return
            member = read_bytes(f"{item.name}/{info.filename}", bytes(buf), budget, depth + 1,
                                items)
            items.append(member)
            if member.uninspectable and member.kind == "zip":
                # a nested archive we cannot open makes this one uninspectable too
                item.uninspectable = member.uninspectable
        item.text = " ".join(names)
