"""The milter front: sans-I/O codec and asyncio server."""
