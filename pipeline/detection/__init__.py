"""Detection logic: enrichment, windows, features, state, detectors and alerts; no I/O."""
