"""Loading the model and picking up new versions without a restart.

:class:`ModelWatcher` is used by the daemon loop. A model root is a directory with a
``current`` pointer file naming a version directory (written by
:func:`detector.models.store.promote`); a plain bundle directory is also accepted (then there
is nothing to watch). Every ``watch_s`` the pointer is read; when it names another version,
the bundle is loaded and verified in a background thread (the loop keeps scoring with the old
model meanwhile) and handed over at the next check. The debouncing state of the old pipeline
is carried over and the window engine is untouched, so no window state is lost. A bundle that
fails to load is logged and counted, and the old model stays.

:attr:`ModelWatcher.created_ts` is the creation time (the model card's ``created``) of the
model handed out last, for ``podguard_model_created_timestamp_seconds``; None when the card
does not say (logged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from detector.errors import ModelIntegrityError
from detector.models.store import CURRENT, card_created
from detector.pipeline import Pipeline, default_model_dir
from detector.settings import DetectionSettings


class ModelWatcher:
    def __init__(self, root: str | Path | None, *, detection: DetectionSettings,
                 logger: logging.Logger, watch_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root) if root else default_model_dir()
        self.detection = detection
        self.log = logger
        self.watch_s = watch_s
        self.clock = clock
        self._pointer: str | None = None
        self._next_check = 0.0
        self._loading: threading.Thread | None = None
        self._loaded: Pipeline | None = None
        self._loaded_created: float | None = None
        self._failed: str | None = None
        self._lock = threading.Lock()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.created_ts: float | None = None  # of the model handed out last, unix seconds

    def _read_pointer(self) -> str | None:
        try:
            return (self.root / CURRENT).read_text().strip()
        except OSError:
            return None

    def load(self) -> Pipeline:
        """The model named now (raises ModelIntegrityError/ConfigError if it cannot load)."""
        self._pointer = self._read_pointer()
        pipe = Pipeline.load(self.root, settings=self.detection)
        self.created_ts = self._created(pipe)
        self._next_check = self.clock() + self.watch_s
        self.log.info("model loaded", extra={"version": pipe.version, "root": str(self.root)})
        return pipe

    def poll(self, current: Pipeline) -> tuple[Pipeline | None, str | None]:
        """``(new pipeline, None)`` when a new version is ready, ``(None, error)`` when one
        failed to load, else ``(None, None)``. Cheap: reads one small file every ``watch_s``."""
        with self._lock:
            loaded, failed, created = self._loaded, self._failed, self._loaded_created
            self._loaded = self._failed = None
        if loaded is not None:
            loaded.adopt_state(current)  # keep the debouncing state (streaks) per pod
            self.created_ts = created
            self.reloads_ok += 1
            self.log.info("model reloaded", extra={"from": current.version,
                                                    "to": loaded.version})
            return loaded, None
        if failed is not None:
            self.reloads_failed += 1
            self.log.error("new model refused; the current one keeps scoring",
                           extra={"error": failed, "version": current.version})
            return None, failed
        now = self.clock()
        if now < self._next_check or (self._loading is not None and self._loading.is_alive()):
            return None, None
        self._next_check = now + self.watch_s
        pointer = self._read_pointer()
        if pointer is None or pointer == self._pointer:
            return None, None
        self._pointer = pointer
        self.log.info("model pointer changed; loading", extra={"version": pointer})
        self._loading = threading.Thread(target=self._load_bg, name="podguard-model-load",
                                         daemon=True)
        self._loading.start()
        return None, None

    def _load_bg(self) -> None:
        try:
            pipe = Pipeline.load(self.root, settings=self.detection)
        except Exception as e:  # any failure keeps the old model
            with self._lock:
                self._failed = f"{type(e).__name__}: {e}"
            return
        created = self._created(pipe)
        with self._lock:
            self._loaded, self._loaded_created = pipe, created

    def _created(self, pipe: Pipeline) -> float | None:
        try:
            return card_created(self.root, pipe.version)
        except ModelIntegrityError as e:  # the model itself loaded: keep it, say why
            self.log.warning("model creation time unknown", extra={"version": pipe.version,
                                                                  "error": str(e)})
            return None

    def wait_idle(self, timeout: float) -> None:
        """Waits for a background load (tests)."""
        t = self._loading
        if t is not None:
            t.join(timeout)
