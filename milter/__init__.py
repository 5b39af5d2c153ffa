"""skot-milter: the SKOT school board's mail gateway policy filter."""

__version__ = "0.1.0"
