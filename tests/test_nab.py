"""NAB standard-profile scorer (detector.nab) on small hand-made files with known scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detector import nab
from detector.errors import InputError

N = 1000  # probationary period: 150 rows
SIG_M1 = 2.0 / (1.0 + math.exp(-5.0)) - 1.0  # sigma(-1) = 0.98661


def det(n: int, *rows: int) -> np.ndarray:
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


def test_scaled_sigmoid_values() -> None:
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(SIG_M1)
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-SIG_M1)
    assert nab.scaled_sigmoid(3.5) == -1.0  # NAB's cut-off
    assert nab.probationary_length(1000) == 150
    assert nab.probationary_length(15_903) == 750  # capped


def test_detection_at_window_start_earns_sigma_minus_one() -> None:
    s = nab.score_file(det(N, 500), [(500, 599)])
    assert s.raw == pytest.approx(SIG_M1)
    assert (s.windows, s.detected, s.false_positives) == (1, 1, 0)
    assert s.perfect == pytest.approx(SIG_M1) and s.null == -1.0
    assert nab.normalise([s]).score == pytest.approx(100.0)


def test_detection_at_window_end_earns_almost_nothing() -> None:
    s = nab.score_file(det(N, 599), [(500, 599)])
    assert s.raw == pytest.approx(2.0 / (1.0 + math.exp(-5.0 / 100)) - 1.0)  # y = -1/100
    assert 0 < s.raw < 0.03
    assert nab.normalise([s]).score == pytest.approx(100 * (1 + s.raw) / (1 + SIG_M1))


def test_only_the_first_detection_of_a_window_counts() -> None:
    first = nab.score_file(det(N, 550), [(500, 599)])
    many = nab.score_file(det(N, 550, 560, 599), [(500, 599)])
    assert many.raw == pytest.approx(first.raw)
    assert first.raw == pytest.approx(nab.scaled_sigmoid(-50 / 100))  # y = -(599-550+1)/100


def test_missed_window_costs_one_and_null_scores_zero() -> None:
    s = nab.score_file(np.zeros(N, bool), [(300, 399), (600, 699)])
    assert s.raw == -2.0
    assert nab.normalise([s]).score == pytest.approx(0.0)


def test_false_positive_right_after_a_window_costs_little() -> None:
    s = nab.score_file(det(N, 500, 600), [(500, 599)])  # FP one row past the window's end
    fp = 0.11 * nab.scaled_sigmoid(1 / 100)
    assert s.fp_score == pytest.approx(fp)
    assert -0.005 < fp < 0
    assert s.raw == pytest.approx(SIG_M1 + fp)
    far = nab.score_file(det(N, 500, 950), [(500, 599)])  # 3.5 widths past: full cost
    assert far.fp_score == pytest.approx(-0.11)
    mid = nab.score_file(det(N, 500, 699), [(500, 599)])  # one width past
    assert mid.fp_score == pytest.approx(0.11 * nab.scaled_sigmoid(1.0))


def test_false_positive_with_no_preceding_window_costs_full() -> None:
    s = nab.score_file(det(N, 200), [(500, 599)])
    assert s.fp_score == pytest.approx(-0.11)
    assert s.raw == pytest.approx(-1.11)
    assert s.false_positives == 1
    no_windows = nab.score_file(det(N, 200, 300), [])
    assert no_windows.raw == pytest.approx(-0.22) and no_windows.windows == 0


def test_probationary_period_is_ignored() -> None:
    # detections in the first 150 rows neither cost nor earn
    s = nab.score_file(det(N, 0, 10, 149), [(500, 599)])
    assert s.raw == -1.0 and s.false_positives == 0
    # a window wholly inside the probationary period does not count at all
    inside = nab.score_file(det(N, 50), [(40, 60)])
    assert inside.windows == 0 and inside.raw == 0.0
    # a window straddling its end counts; only its rows after the period can detect it
    straddle = nab.score_file(det(N, 100), [(100, 199)])
    assert straddle.windows == 1 and straddle.raw == -1.0
    late = nab.score_file(det(N, 150), [(100, 199)])
    assert late.raw == pytest.approx(nab.scaled_sigmoid(-50 / 100))


def test_sets_are_normalised_together() -> None:
    a = nab.score_file(det(N, 500), [(500, 599)])
    b = nab.score_file(np.zeros(N, bool), [(500, 599)])
    s = nab.normalise([a, b])
    assert s.windows == 2 and s.detected == 1
    assert s.score == pytest.approx(100 * (SIG_M1 - 1 + 2) / (2 * SIG_M1 + 2))


def test_reward_scaled_is_nabs_code() -> None:
    s = nab.score_file(det(N, 500, 600), [(500, 599)], reward_scaled=True)
    assert s.tp_score == pytest.approx(1.0)
    assert s.fp_score == pytest.approx(0.11 * nab.scaled_sigmoid(1 / 99))
    assert s.perfect == pytest.approx(1.0)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(InputError, match="outside"):
        nab.score_file(np.zeros(10, bool), [(5, 12)])
    with pytest.raises(InputError, match="overlap"):
        nab.score_file(np.zeros(100, bool), [(10, 20), (20, 30)])


def _write_corpus(root: Path) -> None:
    (root / "data" / "sub").mkdir(parents=True)
    ts = [f"2020-01-01 {h:02d}:{m:02d}:00" for h in range(10) for m in range(0, 60, 5)]
    rows = "\n".join(f"{t},{i % 7}" for i, t in enumerate(ts))
    (root / "data" / "sub" / "a.csv").write_text("timestamp,value\n" + rows + "\n")
    (root / "labels_combined_windows.json").write_text(json.dumps(
        {"sub/a.csv": [["2020-01-01 05:00:00.000000", "2020-01-01 05:55:00.000000"]]}))


def test_corpus_reader_maps_windows_to_rows(tmp_path: Path) -> None:
    _write_corpus(tmp_path)
    (f,) = nab.load_corpus(tmp_path)
    assert f.name == "sub/a.csv" and f.subset == "sub" and f.values.size == 120
    assert f.windows == ((60, 71),)
    assert f.step_s == 300.0
    scores = nab.score_detections([f], {f.name: det(120, 60)})
    assert nab.by_subset([f], scores, subsets=("sub",))["total"].score == pytest.approx(100.0)


def test_corpus_reader_names_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"labels_combined_windows\.json"):
        nab.load_corpus(tmp_path)
    _write_corpus(tmp_path)
    p = tmp_path / "data" / "sub" / "a.csv"
    p.write_text(p.read_text().replace(",3\n", ",oops\n", 1))
    with pytest.raises(InputError, match="not a finite number"):
        nab.load_corpus(tmp_path)


def test_evaluate_nab_command_on_a_tiny_corpus(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from detector import nab_eval
    from detector.cli import main

    _write_corpus(tmp_path)
    res = tmp_path / "results" / "ARTime" / "sub"
    res.mkdir(parents=True)
    (f,) = nab.load_corpus(tmp_path)
    rows = "\n".join(f"{str(t).replace('T', ' ')},{1.0 if i == 60 else 0.0}"
                     for i, t in enumerate(f.timestamps))
    (res / "ARTime_a.csv").write_text("timestamp,anomaly_score\n" + rows + "\n")
    (tmp_path / "results" / "thresholds.json").write_text(
        json.dumps({"ARTime": {"standard": {"threshold": 0.5}}}))
    published = nab_eval.published_rows(tmp_path, [f])
    assert published[0].scores["total"].score == pytest.approx(100.0)  # flags the window start
    # the README's figures are not this corpus's: the command says so and exits 1
    assert main(["evaluate", "--nab", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "| podguard univariate |" in out and "NOT reproduced" in out
    assert "| podguard univariate, tuned on these labels @ " in out
    assert "| podguard univariate, held out (threshold tuned on the other subsets) |" in out
    assert "podguard univariate: " in out and "points lost: missed windows " in out
    written = json.loads((tmp_path / "out" / "nab.json").read_text())
    assert written["rows"][3]["detector"] == "ARTime"
    assert written["tuning"]["grid"] == list(nab_eval.TUNING_GRID)
    assert set(written["rows"][0]["files"]) == {"sub/a.csv"}  # podguard's rows say why
    assert "max_score_outside" in written["rows"][0]["files"]["sub/a.csv"]
    lost = written["rows"][0]["scores"]["total"]["points_lost"]
    assert set(lost) == {"missed", "late", "false_positives"}
    assert sum(lost.values()) == pytest.approx(100 - written["rows"][0]["scores"]["total"][
        "score"], abs=0.05)
    assert "files" in written["rows"][1] and "files" not in written["rows"][3]
    assert main(["evaluate", "--nab", str(tmp_path / "missing")]) == 2


def _nab_file(name: str, windows: tuple[tuple[int, int], ...]) -> nab.NabFile:
    ts = np.datetime64("2020-01-01T00:00:00") + np.arange(N) * np.timedelta64(300, "s")
    return nab.NabFile(name=name, timestamps=ts, values=np.zeros(N), windows=windows)


def test_threshold_tuning_and_leave_one_subset_out() -> None:
    from detector import nab_eval

    a = _nab_file("artificialWithAnomaly/a.csv", ((500, 599),))
    b = _nab_file("realTweets/b.csv", ((500, 599),))
    q = _nab_file("artificialNoAnomaly/q.csv", ())
    files = [a, b, q]

    def run(da: tuple[int, ...], db: tuple[int, ...], dq: tuple[int, ...]
            ) -> dict[str, nab.FileScore]:
        return nab.score_detections(files, {a.name: det(N, *da), b.name: det(N, *db),
                                            q.name: det(N, *dq)})

    runs = {2.0: run((500,), (500,), (700,)),  # perfect, but alarms on the quiet series
            3.0: run((550,), (), ()),  # catches a's window late, misses b's
            4.0: run((), (500,), ())}  # misses a's, catches b's at its start
    (tuned, held), info = nab_eval.tuning_from_runs(files, runs)
    # the quiet series rules 2.0 out; of 3.0 (0.848 - 1) and 4.0 (-1 + 0.987), 4.0 is best
    assert info["tuned_threshold"] == 4.0 and tuned.no_anomaly_alarms == 0
    assert tuned.scores["total"].score == pytest.approx(
        100 * (SIG_M1 - 1 + 2) / (2 * SIG_M1 + 2))
    # held out: a at the best threshold for b (4.0: missed), b at the best for a (3.0: missed)
    assert info["held_out_thresholds"] == {"artificialWithAnomaly": 4.0, "realTweets": 3.0}
    assert held.scores["total"].score == pytest.approx(0.0)
    assert held.scores["total"].detected == 0 and held.scores["total"].windows == 2
    with pytest.raises(InputError, match="no threshold"):
        nab_eval.tuning_from_runs(files, {})


def test_file_detail_names_each_window_and_false_positive() -> None:
    from detector import nab_eval

    f = _nab_file("realTweets/f.csv", ((100, 120), (500, 599), (800, 899)))
    d = det(N, 130, 160, 550, 610, 950)  # 130: in the probationary period (150 rows)
    detail = nab_eval.file_detail([f], {f.name: d})[f.name]
    # the window wholly inside the probationary period is not scored, so not listed
    assert detail["windows"] == [
        {"rows": [500, 599], "first_detection": 550, "position": 0.5},
        {"rows": [800, 899], "first_detection": None, "position": None}]
    assert detail["false_positive_rows"] == [160, 610, 950]
    row = nab_eval._row("x", [f], {f.name: d}, detail=True)
    assert row.to_json_dict()["files"][f.name] == detail
    assert "files" not in nab_eval._row("x", [f], {f.name: d}).to_json_dict()


def test_points_lost_sum_to_what_the_score_misses() -> None:
    # windows: caught on their first row (nothing lost), at their centre (late), missed
    wins = [(200, 299), (400, 499), (600, 699)]
    s = nab.score_file(det(N, 200, 450, 900, 950), wins)  # 900, 950: false positives
    assert (s.detected, s.false_positives) == (2, 2)
    total = nab.normalise([s])
    unit = 100 / (3 * SIG_M1 + 3)  # points per unit of raw score (perfect - null)
    assert total.lost["missed"] == pytest.approx((SIG_M1 + 1) * unit)
    assert total.lost["late"] == pytest.approx((SIG_M1 - nab.scaled_sigmoid(-0.5)) * unit)
    assert total.lost["false_positives"] == pytest.approx(-s.fp_score * unit)
    assert s.fp_score == pytest.approx(  # 2 and 2.5 widths past the last window
        0.11 * (nab.scaled_sigmoid(201 / 100) + nab.scaled_sigmoid(251 / 100)))
    assert sum(total.lost.values()) == pytest.approx(100 - total.score)
    perfect = nab.normalise([nab.score_file(det(N, 200, 400, 600), wins)])
    assert perfect.score == pytest.approx(100) and max(perfect.lost.values()) < 1e-9
    assert nab.normalise([nab.score_file(det(N, 500), [])]).lost == {}  # no window: no score


def test_file_detail_sets_each_window_against_the_series_own_excursions() -> None:
    from detector import nab_eval

    f = _nab_file("realTweets/f.csv", ((500, 599), (800, 899)))
    score = np.zeros(N)
    score[:10] = np.nan  # warming up
    score[140] = 50.0  # in the probationary period: not counted
    score[300], score[560], score[850], score[999] = 2.5, 7.0, 1.5, 3.0
    d = score >= 3.0
    detail = nab_eval.file_detail([f], {f.name: d}, {f.name: score})[f.name]
    assert [w["max_score"] for w in detail["windows"]] == [7.0, 1.5]
    assert [w["first_detection"] for w in detail["windows"]] == [560, None]
    assert detail["max_score_outside"] == 3.0 and detail["false_positive_rows"] == [999]
    assert "max_score_outside" not in nab_eval.file_detail([f], {f.name: d})[f.name]


def test_file_detail_gives_the_flagged_share_and_the_longest_episode() -> None:
    from detector import nab_eval

    f = _nab_file("artificialWithAnomaly/f.csv", ((500, 599),))
    score = np.zeros(N)
    score[:10] = np.nan
    score[100:150] = 4.0  # one episode of 50 rows
    score[[700, 760, 830]] = 4.0  # one of 131 rows (gaps of 60, 70 < 100)
    score[990] = 4.0  # alone (160 rows after the last)
    detail = nab_eval.file_detail([f], {f.name: score >= 3.0}, {f.name: score},
                                  threshold=3.0, gap=100)[f.name]
    assert detail["flagged_share"] == round(54 / N, 4)
    assert detail["longest_episode"] == [700, 830]
    quiet = nab_eval.file_detail([f], {f.name: score >= 9.0}, {f.name: score},
                                 threshold=9.0, gap=100)[f.name]
    assert quiet["flagged_share"] == 0.0 and quiet["longest_episode"] is None
    assert "flagged_share" not in nab_eval.file_detail([f], {f.name: score >= 3.0},
                                                       {f.name: score})[f.name]
