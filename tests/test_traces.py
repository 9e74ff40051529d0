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


# ------------------------------------------------------------------ timestamps a replay refuses

NOW = 1_767_225_600.0


def _rows(ts: list[float] | list[str] | pd.Series) -> pd.DataFrame:
    n = len(ts)
    return pd.DataFrame({"timestamp": ts, "namespace": "ns", "pod": "p", "container": "c",
                         "node": "", "metric": tr.WORKING_SET, "value": np.arange(n, dtype=float)})


def test_millisecond_timestamps_are_named_as_milliseconds(tmp_path: Path) -> None:
    p = tmp_path / "ms.csv"
    _rows([NOW * 1000 + 15_000 * i for i in range(10)]).to_csv(p, index=False)
    with pytest.raises(InputError) as e:
        tr.load_trace(p)
    msg = str(e.value)
    assert "these look like milliseconds" in msg and "line 2" in msg and str(p) in msg
    assert "2026-01-01" in msg and "divide" in msg
    with pytest.raises(InputError, match="nanoseconds"):
        tr.validate_trace(_rows([NOW * 1e9]))
    with pytest.raises(InputError, match="after 1970"):
        tr.validate_trace(_rows([NOW, -5.0]))


def test_a_datetime_column_is_read_as_unix_seconds(tmp_path: Path) -> None:
    times = pd.to_datetime([NOW + 15 * i for i in range(4)], unit="s", utc=True)
    p = tmp_path / "dt.parquet"
    _rows(pd.Series(times)).to_parquet(p)
    df = tr.load_trace(p)
    assert df["timestamp"].tolist() == [NOW + 15 * i for i in range(4)]
    naive = tr.validate_trace(_rows(pd.Series(times.tz_localize(None))))  # naive: UTC
    assert naive["timestamp"].tolist() == df["timestamp"].tolist()
    iso = tr.validate_trace(_rows(["2026-01-01T00:00:00Z", "2026-01-01T00:00:15+00:00"]))
    assert iso["timestamp"].tolist() == [NOW, NOW + 15]


@pytest.mark.parametrize("odd", [1.0, 9.87e10])
def test_one_row_far_from_the_rest_is_refused_before_any_walk(odd: float) -> None:
    from detector.replay import iter_batches

    rows = tr.validate_trace(_rows([NOW + 60 * i for i in range(100)] + [odd]),
                             source="odd.parquet")
    with pytest.raises(InputError) as e:
        next(iter_batches(rows, step_s=60.0, max_future_s=None))
    msg = str(e.value)
    assert "odd.parquet" in msg and "row 100" in msg and "years" in msg, msg
    assert "a timestamp is probably wrong" in msg


def test_a_row_in_the_future_is_refused_with_its_row() -> None:
    from detector.replay import iter_batches

    now = 1_800_000_000.0
    rows = tr.validate_trace(_rows([now - 600, now - 300, now + 7200, now - 60]))
    with pytest.raises(InputError, match=r"row 2 has timestamp .* in the future|future"):
        tr.check_replayable(rows, step_s=60, now=now, max_future_s=3600)
    tr.check_replayable(rows, step_s=60, now=now, max_future_s=86400)  # within the skew
    wall = tr.validate_trace(_rows([9.0e10]))  # year ~4822, ahead of any wall clock
    with pytest.raises(InputError, match="in the future"):
        next(iter_batches(wall, step_s=60.0))


def test_replay_cli_on_a_millisecond_trace_is_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = tmp_path / "ms.csv"
    _rows([NOW * 1000 + 15_000 * i for i in range(40)]).to_csv(p, index=False)
    r = subprocess.run([sys.executable, "-m", "detector", "replay", str(p), "--out",
                        str(tmp_path / "v.jsonl"), "--no-progress"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "these look like milliseconds" in r.stderr and "Traceback" not in r.stderr
