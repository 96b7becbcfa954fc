"""Models benchmark: what the anomaly model costs the live pipeline, and what training costs.

Prints, for the model shipped in the package (``models/default``) and for fresh fits:

* load time of a verified model directory (hash checks + skops load);
* scoring throughput of ``LoadedModel.score`` (entity-windows per second): the pipeline
  calls it once per closed window batch, so it bounds the windows one worker can score;
* fit time of the IsolationForest, LOF and OCSVM variants on N benign-like windows;
* peak memory (max RSS) of this process.

Run: ``.venv/bin/python benchmarks/bench_models.py [--quick]`` (``--quick`` < 30 s).
Figures vary with the load of this shared machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import emit, peak_rss_mib
from flowwarden.models.estimators import WindowAnomalyDetector
from flowwarden.models.registry import DEFAULT_DIR, load_model


def windows(n: int, names: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.lognormal(2, 1.5, (n, len(names))), columns=names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 30 s")
    args = parser.parse_args()
    n_score = 20_000 if args.quick else 200_000
    n_fit = 5_000 if args.quick else 50_000
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    t = time.perf_counter()
    model = load_model(DEFAULT_DIR)
    load_s = time.perf_counter() - t
    print(f"load {model.version}: {load_s * 1000:.0f} ms ({len(model.feature_names)} features)")
    emit("models", "default model load", round(load_s * 1000, 1), "ms")

    X = windows(n_score, model.feature_names)
    model.score(X.iloc[:100])  # warm up
    t = time.perf_counter()
    model.score(X)
    score_s = time.perf_counter() - t
    rate = n_score / score_s
    print(f"score {n_score:,} windows: {score_s:.2f} s = {rate:,.0f} windows/s")
    emit("models", "anomaly scoring", round(rate), "windows/s", note=f"{n_score} windows, default model")

    for method, params in (
        ("isolation_forest", {"n_estimators": 200}),
        ("lof", {"max_train_samples": 5000}),
        ("ocsvm", {"max_train_samples": 5000}),
    ):
        Xf = windows(n_fit, model.feature_names, seed=1)
        t = time.perf_counter()
        WindowAnomalyDetector(method=method, random_state=0, **params).fit(Xf)  # type: ignore[arg-type]
        fit_s = time.perf_counter() - t
        print(f"fit {method} on {n_fit:,} windows: {fit_s:.2f} s")
        emit("models", f"fit {method}", round(fit_s, 2), "s", note=f"{n_fit} windows")

    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    emit("models", "peak memory", round(peak_rss_mib()), "MiB")


if __name__ == "__main__":
    main()
