"""The engine's numpy paths against the pandas code they replaced (same values, same ties)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flowwarden.pipeline.detection.features import YOUNG_EDGE_S, Prepared, _young, first_rows
from flowwarden.pipeline.detection.state import Vocab


def _young_by_groupby(keys: pd.DataFrame, edges: pd.DataFrame) -> dict[str, np.ndarray]:
    """The groupby that :func:`_young` replaced, kept as the reference."""
    ng = len(keys)
    out = {k: np.zeros(ng) for k in ("bytes", "age", "ratio", "repeat", "prior")}
    gl = edges[edges["glob"].to_numpy()]
    ws_now = float(keys["window_start"].max())
    gl = gl[(ws_now - gl["first"].to_numpy()) <= YOUNG_EDGE_S]
    if not len(gl):
        return out
    ge = gl.groupby(["gid", "hash"], sort=False).agg(
        b=("bytes", "sum"),
        bi=("bytes_in", "sum"),
        prior=("prior", "first"),
        first=("first", "first"),
        repeat=("repeat", "min"),
    )
    ge = ge.assign(total=ge["b"] + ge["prior"]).sort_values("total")
    top = ge[~ge.index.get_level_values(0).duplicated(keep="last")]
    idx = top.index.get_level_values(0).to_numpy(dtype="int64")
    out["bytes"][idx] = top["total"].to_numpy()
    out["age"][idx] = keys["window_start"].to_numpy()[idx] - top["first"].to_numpy()
    out["ratio"][idx] = top["b"].to_numpy() / np.maximum(top["bi"].to_numpy(), 1.0)
    out["repeat"][idx] = top["repeat"].to_numpy(dtype="float64")
    out["prior"][idx] = top["prior"].to_numpy()
    return out


@pytest.mark.parametrize("seed", range(12))
def test_top_young_address_matches_the_groupby_ties_included(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ng, n = int(rng.integers(1, 40)), int(rng.integers(1, 3000))
    hashes = rng.integers(1, 2**63, 60, dtype="uint64")
    h = hashes[rng.integers(0, 60, n)]
    row, uniq = pd.factorize(h)
    # Few distinct byte counts: many ties between a window's addresses (the sort decides them).
    prior_of = rng.choice([0.0, 100.0, 300.0], len(uniq))
    first_of = 1000.0 - rng.choice([0.0, 10.0, 2 * YOUNG_EDGE_S], len(uniq))
    edges = pd.DataFrame(
        {
            "gid": rng.integers(0, ng, n),
            "hash": h,
            "glob": rng.random(n) < 0.7,
            "bytes": rng.choice([0.0, 100.0, 200.0], n),
            "bytes_in": rng.choice([0.0, 50.0, 5000.0], n),
            "prior": prior_of[row],
            "first": first_of[row],
            "repeat": rng.random(n) < 0.8,
        }
    )
    keys = pd.DataFrame({"window_start": np.full(ng, 1000.0)})
    p = Prepared(pd.DataFrame(), np.zeros(0, dtype="int64"), keys, np.zeros(0), np.zeros(0))
    got = _young(
        p,
        edges,
        edges["glob"].to_numpy(),
        row,
        edges["first"].to_numpy(),
        edges["prior"].to_numpy(),
        edges["repeat"].to_numpy(),
    )
    want = _young_by_groupby(keys, edges)
    for mine, theirs in (
        ("young_ext_bytes", "bytes"),
        ("young_ext_age", "age"),
        ("young_ext_upload_ratio", "ratio"),
        ("young_ext_repeat", "repeat"),
        ("young_ext_prior", "prior"),
    ):
        np.testing.assert_array_equal(got[mine], want[theirs], err_msg=mine)


def test_categorical_columns_encode_as_their_strings_would() -> None:
    cats = pd.CategoricalDtype(["", "ns-b", "ns-a", "pod-1", "never-used"])
    first = pd.Series(pd.Categorical(["pod-1", "ns-a", None, "pod-1", "ns-b", ""], dtype=cats))
    second = pd.Series(pd.Categorical(["ns-a", "never-used", "pod-1"], dtype=cats))
    fast, plain = Vocab(), Vocab()
    fast.encode(pd.Series(["x", "ns-a"]))  # strings met before, from another column
    plain.encode(pd.Series(["x", "ns-a"]))
    for col in (first, second, first):
        got = fast.encode(col)
        want = plain.encode(pd.Series(col.astype(object).fillna("").to_numpy(dtype=object)))
        np.testing.assert_array_equal(got, want)
    assert fast.strings == plain.strings, "new strings numbered in the order the columns name them"
    np.testing.assert_array_equal(fast.hashes[: len(fast)], plain.hashes[: len(plain)])


def test_first_rows_of_factorized_codes_are_those_of_a_sort() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 5000):
        codes, _ = pd.factorize(rng.integers(0, 300, n))
        np.testing.assert_array_equal(first_rows(codes), np.unique(codes, return_index=True)[1])
