"""The audit store: append-only, hash-chained evidence of every decision."""
