"""OLE containers: legacy Office (doc, xls, ppt) and encrypted OOXML (EncryptedPackage)."""

from __future__ import annotations

import io
import re

import olefile

from milter.inspect import Item

_WORDS = re.compile(rb"[\x20-\x7e\xa0-\xff]{4,}")


def read_ole(item: Item, data: bytes) -> None:
    ole = olefile.OleFileIO(io.BytesIO(data))
    try:
        streams = {"/".join(s) for s in ole.listdir()}
        if "EncryptedPackage" in streams or "EncryptionInfo" in streams:
            item.kind = "encrypted-office"
            item.uninspectable = "password-protected Office document"
            return
        for name, kind in (("WordDocument", "doc"), ("Workbook", "xls"), ("Book", "xls"),
                           ("PowerPoint Document", "ppt")):
            if name in streams:
                item.kind = kind
                raw = ole.openstream(name).read(8 * 2**20)
                if kind == "doc" and _doc_encrypted(raw):
                    item.uninspectable = "password-protected Word document"
                    return
                # Best effort: printable runs, in single-byte and UTF-16LE text.
                text = b" ".join(_WORDS.findall(raw)).decode("cp1252", "replace")
                text += " " + raw.decode("utf-16-le", "ignore")
                item.text = text[:2_000_000]
                return
        item.kind = "ole"
    finally:
        ole.close()


def _doc_encrypted(word_stream: bytes) -> bool:
    # FIB: fEncrypted is bit 0x0100 of the flags word at offset 0x0A.
    return len(word_stream) > 12 and bool(int.from_bytes(word_stream[10:12], "little") & 0x0100)
