"""The five flowwarden dashboards, one module each; each exposes ``build() -> dict``."""
