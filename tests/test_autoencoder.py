"""Autoencoder: reproducibility, early stopping, the device/AMP path, numpy scoring and
gradient against torch, persistence (numpy-written weights in torch's format)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from threadpoolctl import threadpool_limits

from detector.errors import ConfigError, ModelIntegrityError
from detector.models.autoencoder import (
    AE_JSON,
    AE_WEIGHTS,
    AutoencoderConfig,
    AutoencoderDetector,
)
from detector.models.forest import config_from_dict
from tests.support.drift_data import NAMES, drifted, healthy

torch.set_num_threads(1)

_FAST = AutoencoderConfig(max_epochs=40, patience=5)


@pytest.fixture(scope="module")
def ae() -> AutoencoderDetector:
    return AutoencoderDetector(_FAST, device="cpu").fit(healthy(3000, seed=1), NAMES)


def test_training_is_seeded_and_reproducible() -> None:
    x = healthy(800, seed=2)
    cfg = AutoencoderConfig(max_epochs=5, patience=5)
    a = AutoencoderDetector(cfg, device="cpu").fit(x, NAMES)
    b = AutoencoderDetector(cfg, device="cpu").fit(x, NAMES)
    c = AutoencoderDetector(AutoencoderConfig(max_epochs=5, seed=1), device="cpu").fit(x, NAMES)
    wa, wb, wc = a.weights_, b.weights_, c.weights_
    assert set(wa) == {f"{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")}
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)
    assert a.history_ is not None and b.history_ is not None
    assert a.history_.train_loss == b.history_.train_loss


def test_deterministic_mode_and_threads_are_restored_after_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    seen: list[tuple[bool, int]] = []
    original = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *args: object, **kwargs: object) -> object:
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    torch.set_num_threads(2)
    try:
        AutoencoderDetector(AutoencoderConfig(max_epochs=1), device="cpu").fit(
            healthy(100, seed=3), NAMES
        )
        assert seen and all(s == (True, 1) for s in seen)  # deterministic, one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_history_and_early_stopping(ae: AutoencoderDetector) -> None:
    h = ae.history_
    assert h is not None
    assert h.device == "cpu" and h.amp_dtype is None
    assert h.epochs == len(h.train_loss) == len(h.val_loss)
    assert h.samples_per_s > 0 and h.seconds > 0
    assert h.train_loss[-1] < h.train_loss[0]  # it learnt something
    assert 1 <= h.best_epoch <= h.epochs
    assert min(h.val_loss) == h.val_loss[h.best_epoch - 1]
    cfg = AutoencoderConfig(max_epochs=500, patience=3, min_delta=0.0, hidden=64, lr=1e-2)
    x = healthy(150, seed=4)  # few rows, a wide net, a high rate: it overfits and stops
    patient = AutoencoderDetector(cfg, device="cpu").fit(x, NAMES)
    hist = patient.history_
    assert hist is not None
    assert hist.stopped_early and hist.epochs < 500
    assert hist.best_epoch == hist.epochs - cfg.patience
    # the restored weights are the best epoch's: the held-out loss recomputed from the same
    # seeded split equals the best validation loss, not the last one
    val_rows = np.random.default_rng(cfg.seed).permutation(len(x))[: round(0.2 * len(x))]
    recomputed = patient.score(x[val_rows]).mean()
    assert recomputed == pytest.approx(min(hist.val_loss), rel=1e-5)
    assert hist.val_loss[-1] > min(hist.val_loss)


def test_device_defaults_to_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    det = AutoencoderDetector(AutoencoderConfig(max_epochs=2)).fit(healthy(200, seed=5), NAMES)
    assert det.history_ is not None and det.history_.device == "cpu"


def test_mixed_precision_path_runs_on_cpu() -> None:
    """The autocast branch CUDA uses (bf16) exercised on the CPU through the same code."""
    det = AutoencoderDetector(AutoencoderConfig(max_epochs=3), device="cpu", amp=True)
    det.fit(healthy(400, seed=6), NAMES)
    assert det.history_ is not None and det.history_.amp_dtype == "bfloat16"
    assert np.all(np.isfinite(det.score(healthy(10, seed=7))))
    assert all(w.dtype == np.float32 for w in det.weights_.values())
    assert all(p.dtype == torch.float32 for p in det.error_module().parameters())


def test_trained_on_the_training_device_loads_on_cpu(tmp_path: Path) -> None:
    """On a GPU machine: trained on CUDA (with autocast), loaded and scored on the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    det = AutoencoderDetector(AutoencoderConfig(max_epochs=5), device=device)
    det.fit(healthy(2000, seed=8), NAMES)
    assert det.history_ is not None and det.history_.device.startswith(device)
    det.save(tmp_path)
    loaded = AutoencoderDetector.load(tmp_path)
    x = healthy(100, seed=9)
    np.testing.assert_array_equal(loaded.score(x), det.score(x))


def test_progress_bar_is_optional(capsys: pytest.CaptureFixture[str]) -> None:
    x = healthy(200, seed=10)
    AutoencoderDetector(AutoencoderConfig(max_epochs=2), device="cpu").fit(x, NAMES)
    assert "autoencoder" not in capsys.readouterr().err
    AutoencoderDetector(AutoencoderConfig(max_epochs=2), device="cpu", progress=True).fit(x, NAMES)
    assert "autoencoder" in capsys.readouterr().err


def test_numpy_scoring_equals_torch(ae: AutoencoderDetector) -> None:
    x = np.vstack([healthy(300, seed=11), drifted(30, seed=12)])
    np.testing.assert_allclose(ae.score(x), ae.score_torch(x), rtol=1e-4, atol=1e-6)


def test_score_is_mean_squared_error_in_scaled_space(ae: AutoencoderDetector) -> None:
    x = healthy(5, seed=13)
    z, _ = ae.scaler.transform(x)
    with torch.inference_mode():
        recon = ae.torch_net()(torch.from_numpy(ae._inputs(x))).numpy()
    np.testing.assert_allclose(ae.score(x), ((z - recon) ** 2).mean(axis=1), rtol=1e-5)


def test_without_missing_mask() -> None:
    det = AutoencoderDetector(AutoencoderConfig(max_epochs=3, use_missing_mask=False))
    det.fit(healthy(300, seed=14), NAMES)
    assert det._inputs(healthy(2, seed=15)).shape == (2, len(NAMES))
    phi, base, s = det.score_shap(drifted(2, seed=16))
    assert phi.shape == (2, len(NAMES))
    np.testing.assert_allclose(phi.sum(axis=1) + base, s, rtol=0.02)


def test_config_rejects_unknown_and_invalid_keys() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict(AutoencoderConfig, {"hiden": 16})
    with pytest.raises(ConfigError):
        AutoencoderConfig(val_fraction=1.5)


def _torch_autograd_error_and_grad(
    det: AutoencoderDetector, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    module = det.error_module().double()
    u = torch.from_numpy(points.astype(np.float64)).requires_grad_(True)
    err = module(u)[:, 0]
    (grad,) = torch.autograd.grad(err.sum(), u)
    return err.detach().numpy(), grad.numpy()


@pytest.mark.parametrize("use_mask", [True, False])
def test_numpy_gradient_equals_torch_autograd(ae: AutoencoderDetector, use_mask: bool) -> None:
    """The hand-written backward pass, at real inputs and at points between them (as the
    integration path visits), including NaN rows (mask inputs on) and far-out rows."""
    det = ae
    if not use_mask:
        det = AutoencoderDetector(AutoencoderConfig(max_epochs=3, use_missing_mask=False))
        det.fit(healthy(300, seed=18), NAMES)
    x = np.vstack([healthy(20, seed=19), drifted(20, seed=20, shift_sd=-6.0)])
    x[:5, ::2] = np.nan
    inputs = det._inputs(x)
    alpha = np.random.default_rng(0).uniform(size=(len(x), 1)).astype(np.float32)
    points = np.vstack([inputs, det.background_[:1] + alpha * (inputs - det.background_[:1])])
    err, grad = det.error_and_grad(points)
    ref_err, ref_grad = _torch_autograd_error_and_grad(det, points)
    assert grad.shape == points.shape == (80, 2 * len(NAMES) if use_mask else len(NAMES))
    np.testing.assert_allclose(err, ref_err, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5 * np.abs(ref_grad).max())
    np.testing.assert_allclose(err[: len(x)], det.score(x), rtol=1e-5)
    if use_mask:  # the mask inputs act through the network: non-zero, not the direct term
        assert np.abs(grad[:, len(NAMES) :]).max() > 0


def test_numpy_gradient_matches_finite_differences(ae: AutoencoderDetector) -> None:
    """Independent of torch: central differences of the float64 error."""
    u = ae._inputs(drifted(3, seed=21)).astype(np.float64)
    _, grad = ae.error_and_grad(u)
    h = 1e-5
    eye = np.eye(u.shape[1])
    numeric = np.stack(
        [
            (ae.error_and_grad(u + h * e)[0] - ae.error_and_grad(u - h * e)[0]) / (2 * h)
            for e in eye
        ],
        axis=1,
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6 * np.abs(numeric).max())


def test_saved_weights_are_byte_identical_to_a_torch_writer(
    ae: AutoencoderDetector, tmp_path: Path
) -> None:
    """Same on-disk format as before: what safetensors.torch writes from the state dict."""
    ae.save(tmp_path)
    state = ae.torch_net().state_dict()
    state["explain.background"] = torch.from_numpy(ae.background_)
    torch_bytes = safetensors.torch.save(
        {k: v.contiguous() for k, v in state.items()}, metadata={"format": "podguard.autoencoder/1"}
    )
    assert (tmp_path / AE_WEIGHTS).read_bytes() == torch_bytes


def test_a_bundle_written_by_the_torch_writer_loads(
    ae: AutoencoderDetector, tmp_path: Path
) -> None:
    ae.save(tmp_path)
    tensors = safetensors.torch.load_file(str(tmp_path / AE_WEIGHTS))
    safetensors.torch.save_file(tensors, str(tmp_path / AE_WEIGHTS))  # the old writer's output
    loaded = AutoencoderDetector.load(tmp_path)
    x = drifted(20, seed=22)
    np.testing.assert_array_equal(loaded.score(x), ae.score(x))
    np.testing.assert_array_equal(loaded.background_, ae.background_)


def test_load_refuses_weights_that_do_not_fit(ae: AutoencoderDetector, tmp_path: Path) -> None:
    ae.save(tmp_path)
    tensors = safetensors.numpy.load_file(str(tmp_path / AE_WEIGHTS))
    tensors["0.weight"] = np.zeros((3, 3), dtype=np.float32)
    safetensors.numpy.save_file(tensors, str(tmp_path / AE_WEIGHTS))
    with pytest.raises(ModelIntegrityError, match="do not fit"):
        AutoencoderDetector.load(tmp_path)
    del tensors["0.weight"]
    safetensors.numpy.save_file(tensors, str(tmp_path / AE_WEIGHTS))
    with pytest.raises(ModelIntegrityError, match="do not fit"):
        AutoencoderDetector.load(tmp_path)


@pytest.mark.parametrize("bad", ["nan", "int", "bfloat16", "not safetensors"])
def test_load_refuses_weights_numpy_cannot_use(
    ae: AutoencoderDetector, tmp_path: Path, bad: str
) -> None:
    ae.save(tmp_path)
    path = tmp_path / AE_WEIGHTS
    if bad == "bfloat16":  # numpy has no bfloat16: refused, not misread
        tensors = safetensors.torch.load_file(str(path))
        tensors["2.bias"] = tensors["2.bias"].to(torch.bfloat16)
        safetensors.torch.save_file(tensors, str(path))
    elif bad == "not safetensors":
        path.write_bytes(b"\x00" * 64)
    else:
        arrays = safetensors.numpy.load_file(str(path))
        if bad == "nan":
            arrays["2.bias"][0] = np.nan
        else:
            arrays["2.bias"] = arrays["2.bias"].astype(np.int32)
        safetensors.numpy.save_file(arrays, str(path))
    with pytest.raises(ModelIntegrityError):
        AutoencoderDetector.load(tmp_path)


def test_load_refuses_a_foreign_state(ae: AutoencoderDetector, tmp_path: Path) -> None:
    ae.save(tmp_path)
    state = json.loads((tmp_path / AE_JSON).read_text())
    state["format"] = "somebody.else/1"
    (tmp_path / AE_JSON).write_text(json.dumps(state))
    with pytest.raises(ModelIntegrityError, match="format"):
        AutoencoderDetector.load(tmp_path)


def test_scoring_throughput_one_core(ae: AutoencoderDetector) -> None:
    x = healthy(10_000, seed=17)
    with threadpool_limits(1):
        ae.score(x[:10])
        best = min(_timed(ae, x) for _ in range(3))
    rate = len(x) / best
    print(f"autoencoder scoring: {rate:,.0f} windows/s on one core")
    assert rate > 50_000


def _timed(det: AutoencoderDetector, x: np.ndarray) -> float:
    start = time.perf_counter()
    det.score(x)
    return time.perf_counter() - start
