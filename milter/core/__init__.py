"""The pure core: message model, context, rules engine and verdict. No sockets, no database."""
