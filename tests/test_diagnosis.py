"""The in-pod diagnoser on real leaks in real PyTorch processes, and its wire format.

Each leak scenario of :mod:`tests.support.leaks` runs as its own training process (started
together, a few seconds each): the test writes a diagnosis request into the process's
:class:`~detector.diagnosis.helper.FileChannel` directory, the training loop's per-step hook
answers it, and the answer must name what leaks - the variable holding it or the line
allocating it - while a healthy loop's answer reports no growing group. The lines to name are
found by their ``# LEAK:`` markers in the scenario file.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from detector.diagnosis import report as rp
from detector.diagnosis.helper import DiagnosisHelper, FileChannel
from detector.diagnosis.inpod import Diagnoser, cuda_sites

ROOT = Path(__file__).resolve().parent.parent
LEAKS = ROOT / "tests" / "support" / "leaks.py"
SCENARIOS = ("kept-loss", "dataset-cache", "worker-cache", "offload", "healthy")
WINDOW_S = 3.0


def marker_line(tag: str) -> int:
    for i, line in enumerate(LEAKS.read_text().splitlines(), start=1):
        if f"# LEAK: {tag}" in line:
            return i
    raise AssertionError(f"no '# LEAK: {tag}' marker in {LEAKS}")


def request(window_s: float = WINDOW_S, **kw: Any) -> rp.DiagnosisRequest:
    return rp.DiagnosisRequest(id="d-" + secrets.token_hex(8), ts=time.time(),
                               window_s=window_s, **kw)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every scenario's answer (the processes run at the same time)."""
    base = tmp_path_factory.mktemp("leaks")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {}
    reqs = {}
    for sc in SCENARIOS:
        d = base / sc
        d.mkdir()
        reqs[sc] = request()
        FileChannel(d).write_request(reqs[sc].to_json())
        procs[sc] = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "tests.support.leaks", sc, "--dir", str(d),
             "--max-s", "90"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
    out: dict[str, dict[str, Any]] = {}
    for sc, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        assert p.returncode == 0, f"{sc} exited {p.returncode}: {stderr[-2000:]}"
        run = json.loads(stdout.strip().splitlines()[-1])
        text = (base / sc / "result.json").read_text()
        assert len(text.encode()) <= rp.MAX_RESULT_BYTES
        res = rp.parse_result(text, expect_id=reqs[sc].id)
        assert res is not None, f"{sc}: unreadable answer {text[:500]}"
        out[sc] = {"result": res, "run": run}
    return out


def _top(res: dict[str, Any]) -> dict[str, Any]:
    assert res["growing"], f"nothing found growing: {res['sentence']}"
    return res["growing"][0]


@pytest.mark.slow
def test_kept_loss_with_graph_names_the_list_and_the_line(answers: dict[str, Any]) -> None:
    res = answers["kept-loss"]["result"]
    g = _top(res)
    assert g["kind"] == "tensors"
    assert (g["dtype"], g["shape"], g["grad_fn"]) == ("float32", [], "MeanBackward0")
    assert g["new"] > 20
    assert g["graph_bytes"] > 100 * g["own_bytes"] > 0  # the graph is what leaks
    assert g["root"]["kind"] == "local" and g["root"]["name"] == "losses"
    assert g["root"]["function"] == "train_epoch"
    line = marker_line("kept-loss")
    assert (g["created_at"]["file"], g["created_at"]["line"]) == ("tests/support/leaks.py",
                                                                   line)
    assert "held by list `losses`" in res["sentence"]
    assert f"leaks.py:{line} in train_epoch" in res["sentence"]
    assert "grad_fn=MeanBackward0" in res["sentence"]


@pytest.mark.slow
def test_dataset_cache_names_the_allocation_site(answers: dict[str, Any]) -> None:
    res = answers["dataset-cache"]["result"]
    g = _top(res)
    assert g["kind"] == "python_heap"
    assert (g["file"], g["line"], g["function"]) == ("tests/support/leaks.py",
                                                     marker_line("cache"), "__getitem__")
    assert g["bytes"] >= 2 << 20
    assert "Python heap +" in res["sentence"] and f"leaks.py:{marker_line('cache')}" in (
        res["sentence"])


@pytest.mark.slow
def test_dataloader_worker_leak_is_named_as_one(answers: dict[str, Any]) -> None:
    res = answers["worker-cache"]["result"]
    g = _top(res)
    assert g["kind"] == "worker" and g["worker"] in (0, 1)
    workers = [w for w in res["workers"] if w["worker"] is not None]
    assert len(workers) == 2 and all(w["rss_growth"] > 2 << 20 for w in workers)
    assert res["workers_rss_growth"] > 4 * max(res["rss_growth"], 1 << 20)
    assert f"DataLoader worker {g['worker']} (pid {g['pid']})" in res["sentence"]
    assert "inside the workers" in res["sentence"]


@pytest.mark.slow
def test_offloaded_tensors_name_the_attribute_and_the_line(answers: dict[str, Any]) -> None:
    res = answers["offload"]["result"]
    g = _top(res)
    assert g["kind"] == "tensors"
    assert (g["device"], g["shape"], g["requires_grad"], g["grad_fn"]) == (
        "cpu", [64, 512], False, None)
    assert g["own_bytes"] >= g["new"] * 64 * 512 * 4 * 0.9
    assert g["root"]["name"] == "recorder" and g["root"]["function"] == "offload"
    assert g["created_at"]["line"] == marker_line("offload")
    assert "held by list `recorder.kept`" in res["sentence"]
    assert f"leaks.py:{marker_line('offload')} in record" in res["sentence"]


@pytest.mark.slow
def test_healthy_trainer_has_no_growing_group(answers: dict[str, Any]) -> None:
    res = answers["healthy"]["result"]
    assert res["growing"] == [], res["growing"]
    assert res["sentence"].startswith("no growing group")


@pytest.mark.parametrize("sc", SCENARIOS)
@pytest.mark.slow
def test_cost_is_bounded_and_tracemalloc_stops(answers: dict[str, Any], sc: str) -> None:
    res, run = answers[sc]["result"], answers[sc]["run"]
    assert run["tracing_after"] is False  # tracemalloc only inside the window
    # the five processes share two cores here, so wall-clock pauses stretch; the CPU time
    # each snapshot took is the bound (the benchmark measures the wall-clock pause alone)
    a, b = res["cost"]["pause_cpu_s"]
    assert 0 < a < 1.0 and 0 < b < 1.0, res["cost"]
    assert all(p < 20.0 for p in res["cost"]["pause_s"]), res["cost"]  # sanity only
    assert WINDOW_S * 0.9 <= res["window_s"] < WINDOW_S + 15  # ends at the next step


def test_import_closure_is_stdlib_only() -> None:
    """The in-pod modules import nothing outside the standard library (torch is used only
    if the process has it already)."""
    code = ("import sys, json; before = set(sys.modules); "
            "import detector.diagnosis.helper, detector.diagnosis.inpod; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    new = json.loads(out.stdout)
    foreign = [m for m in new if m.split(".")[0] not in sys.stdlib_module_names
               and not m.startswith(("detector.diagnosis", "_sysconfigdata"))
               and m not in ("detector", "detector.podclient")]  # whose imports are listed too
    assert foreign == [], f"the in-pod diagnosis imports {foreign}"
    assert "torch" not in new and "numpy" not in new


# ---------------------------------------------------------------------- wire format


def test_request_parse_validates() -> None:
    r = request(window_s=5000)
    assert rp.DiagnosisRequest.parse(r.to_json()) == rp.DiagnosisRequest(
        r.id, r.ts, rp.MAX_WINDOW_S, "")
    for bad in ('{"id": "../x", "ts": 1, "window_s": 3}', '{"id": "d-0123456789", '
                '"ts": NaN, "window_s": 3}', "[1]", "not json", "",
                '{"id": "d-0123456789", "ts": 1, "window_s": true}'):
        assert rp.DiagnosisRequest.parse(bad) is None, bad


def test_result_parse_is_bounded_and_cleaned() -> None:
    rid = "d-" + "a" * 16
    big = {"id": rid, "status": "done", "sentence": "x\u202e\n" + "y" * 1000,
           "growing": [{"kind": "tensors", "note": "z" * 500, "n": float("inf")}] * 20,
           "objects": [{"type": "t" * 100}] * 50}
    text = json.dumps(big)
    assert rp.parse_result(text, expect_id="d-" + "b" * 16) is None
    got = rp.parse_result(text, expect_id=rid)
    assert got is not None
    assert len(rp.dumps(got).encode()) <= rp.MAX_RESULT_BYTES
    assert "\u202e" not in got["sentence"] and "\n" not in got["sentence"]
    assert len(got["sentence"]) <= rp.MAX_SENTENCE
    assert got["growing"][0]["n"] is None and len(got["growing"]) <= rp.MAX_ITEMS
    assert len(json.dumps(big)) > 2 * rp.MAX_RESULT_BYTES
    assert rp.parse_result(json.dumps({"id": rid, "status": "done"}), expect_id=rid) is None


def test_helper_answers_once_ignores_stale_and_never_raises(tmp_path: Path) -> None:
    ch = FileChannel(tmp_path)
    helper = DiagnosisHelper(ch, background=False, diagnoser=Diagnoser(min_bytes=1 << 30))
    old = rp.DiagnosisRequest(id="d-" + "c" * 16, ts=time.time() - 2 * rp.MAX_REQUEST_AGE_S,
                              window_s=1)
    ch.write_request(old.to_json())
    helper.poll_once()
    helper.step()
    assert helper._due is None and helper.results == []
    req = request(window_s=1)
    ch.write_request(req.to_json())
    helper.poll_once()
    helper.step()  # snapshot A
    assert helper._due is not None
    time.sleep(1.05)
    helper.step()  # snapshot B, answered and written
    assert [r["id"] for r in helper.results] == [req.id]
    assert rp.parse_result(ch.read()[1], expect_id=req.id) is not None
    helper.poll_once()
    helper.step()
    assert helper._due is None and len(helper.results) == 1  # not answered twice

    class Broken(Diagnoser):
        def begin(self) -> float:
            raise MemoryError("no room for the snapshot")

    again = request(window_s=1)
    ch.write_request(again.to_json())
    broken = DiagnosisHelper(ch, background=False, diagnoser=Broken())
    broken.poll_once()
    broken.step()  # must not raise into the training loop
    res = rp.parse_result(ch.read()[1], expect_id=again.id)
    assert res is not None and res["status"] == "failed" and "MemoryError" in res["sentence"]


def test_cuda_history_parser_keeps_unfreed_allocations_by_user_frame() -> None:
    """The parser of ``torch.cuda.memory._snapshot()`` (the CUDA calls themselves need a GPU:
    none here). Format as documented for ``_record_memory_history``: per device a list of
    events with action, addr, size and frames (innermost first)."""
    user = {"filename": str(LEAKS), "line": marker_line("offload"), "name": "record"}
    lib = {"filename": "/usr/lib/python3/site-packages/torch/nn/modules/linear.py",
           "line": 125, "name": "forward"}
    events = [{"action": "alloc", "addr": 1, "size": 1 << 20, "frames": [lib, user]},
              {"action": "alloc", "addr": 2, "size": 1 << 20, "frames": [user]},
              {"action": "alloc", "addr": 3, "size": 4096, "frames": [lib]},
              {"action": "free_requested", "addr": 3, "size": 4096, "frames": []},
              {"action": "free_completed", "addr": 3, "size": 4096, "frames": []}]
    sites = cuda_sites({"device_traces": [events], "segments": []})
    assert len(sites) == 1
    assert (sites[0]["line"], sites[0]["bytes"], sites[0]["count"], sites[0]["device"]) == (
        marker_line("offload"), 2 << 20, 2, "cuda:0")
