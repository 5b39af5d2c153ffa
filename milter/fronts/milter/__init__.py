"""The milter front: the sans-I/O codec and its asyncio server."""
