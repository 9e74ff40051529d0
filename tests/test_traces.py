"""Tests of the trace format (detector.traces): validated load/save and time slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import traces as tr
from detector.errors import InputError


def small_trace(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "timestamp": 1_700_000_000.0 + np.sort(rng.uniform(0, 3600, n)),
        "namespace": "ns",
        "pod": rng.choice(["a", "b"], n),
        "container": "c",
        "node": "",
        "metric": rng.choice([tr.WORKING_SET, tr.CPU_SECONDS], n),
        "value": rng.uniform(0, 1e9, n),
    })


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_round_trip_keeps_values_and_uses_categoricals(tmp_path: Path, suffix: str) -> None:
    df = small_trace()
    df.loc[3, "value"] = np.nan
    path = tr.save_trace(df, tmp_path / f"t{suffix}")
    back = tr.load_trace(path)
    assert list(back.columns) == list(tr.TRACE_COLUMNS)
    for c in tr.STRING_COLUMNS:
        assert isinstance(back[c].dtype, pd.CategoricalDtype), c
        assert back[c].astype(str).tolist() == df[c].astype(str).tolist()
    np.testing.assert_array_equal(back["timestamp"].to_numpy(), df["timestamp"].to_numpy())
    np.testing.assert_array_equal(back["value"].to_numpy(), df["value"].to_numpy())
    assert back.attrs["nan_values"] == 1


def test_optional_columns_default_to_empty(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,namespace,pod,metric,value\n1.5,ns,p,m,2\n")
    df = tr.load_trace(p)
    assert df["container"].tolist() == [""] and df["node"].tolist() == [""]


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        ("timestamp,namespace,pod,metric\n1,ns,p,m\n", ["value", "missing"]),
        ("timestamp,namespace,pod,metric,value\n1,ns,p,m,2\nnoon,ns,p,m,3\n",
         ["timestamp", "line 3", "noon"]),
        ("timestamp,namespace,pod,metric,value\n1,ns,p,m,2\n2,ns,p,m,2\n3,ns,p,m,lots\n",
         ["value", "line 4", "lots"]),
        ("timestamp,namespace,pod,metric,value\n1,ns,,m,2\n", ["pod", "line 2"]),
        ("timestamp,namespace,pod,metric,value\n,ns,p,m,2\n", ["timestamp", "line 2"]),
    ],
)
def test_bad_files_name_file_column_and_first_bad_row(
    tmp_path: Path, body: str, must_name: list[str]
) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(InputError) as e:
        tr.load_trace(p)
    msg = str(e.value)
    assert str(p) in msg
    for word in must_name:
        assert word in msg, (word, msg)


def test_explicit_missing_values_are_not_errors(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,namespace,pod,metric,value\n1,ns,p,m,NaN\n2,ns,p,m,\n3,ns,p,m,4\n")
    df = tr.load_trace(p)
    assert df.attrs["nan_values"] == 2 and len(df) == 3


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        tr.load_trace(tmp_path / "nope.csv")
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"junk\.parquet"):
        tr.load_trace(p)


def test_failed_save_leaves_previous_file_and_no_temporary(tmp_path: Path) -> None:
    p = tr.save_trace(small_trace(), tmp_path / "t.parquet")
    before = p.read_bytes()
    bad = small_trace().drop(columns=["metric"])
    with pytest.raises(InputError):
        tr.save_trace(bad, p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.parquet"]


def test_iter_time_chunks_yields_every_row_once_in_time_order() -> None:
    df = tr.validate_trace(small_trace(500)).sample(frac=1.0, random_state=1)  # unsorted
    seen = 0
    prev_end = -np.inf
    for t_end, chunk in tr.iter_time_chunks(df, 60):
        assert t_end > prev_end and t_end % 60 == 0
        ts = chunk["timestamp"].to_numpy()
        assert ((ts > t_end - 60) & (ts <= t_end)).all()
        assert isinstance(chunk["pod"].dtype, pd.CategoricalDtype) or len(chunk) == 0
        seen += len(chunk)
        prev_end = t_end
    assert seen == len(df)


def test_iter_time_chunks_window_and_bad_step() -> None:
    df = small_trace(200)
    t0 = float(np.ceil(df["timestamp"].min() / 60) * 60)
    chunks = list(tr.iter_time_chunks(df, 60, start=t0 + 600, end=t0 + 1200))
    assert [t for t, _ in chunks] == [t0 + 600 + 60 * k for k in range(11)]
    rows = pd.concat([c for _, c in chunks])
    ts = rows["timestamp"].to_numpy()
    assert ((ts > t0 + 540) & (ts <= t0 + 1200)).all()
    assert len(rows) == int(((df["timestamp"] > t0 + 540) & (df["timestamp"] <= t0 + 1200)).sum())
    with pytest.raises(InputError):
        next(tr.iter_time_chunks(df, 0))


def test_counter_naming() -> None:
    assert tr.is_counter(tr.CPU_SECONDS) and tr.is_counter("anything_total")
    assert not tr.is_counter(tr.WORKING_SET) and not tr.is_counter(tr.GPU_FB_USED)
