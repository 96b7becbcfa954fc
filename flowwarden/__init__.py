"""flowwarden: the shared contract (records, settings, bus, store) and the CLI that wires the stages."""

__version__ = "0.1.0"
