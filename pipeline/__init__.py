"""The pipeline stage: flows in, alerts and per-minute rollups out.

``detection`` is the logic (enrichment, windows, features, state, detectors, alerts): pure
functions and objects over DataFrames that do no I/O, so a unit test calls them with a
literal table. ``runtime`` runs it on a stream (consume, align, checkpoint, sinks,
notifiers, model watch, metrics) and talks to the engine and the store through the typed
protocols in :mod:`flowwarden.pipeline.runtime.ports`.
"""
