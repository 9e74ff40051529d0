"""The daemon: ``podguard run``.

- :mod:`.daemon` - the loop: poll the source, fold samples into windows, score every step,
  hand verdicts to the sinks and the remediation hook, commit, hot-reload the model, stop
  gracefully;
- :mod:`.server` - ``/metrics``, ``/healthz``, ``/readyz`` on one small HTTP server;
- :mod:`.metrics` - the daemon's own metrics (injected registry, per-pod series built at
  scrape time);
- :mod:`.models` - loading the model and watching the model root's ``current`` pointer;
- :mod:`.logs` - structured JSON logs;
- :mod:`.hooks` - the dry-run remediation of the embedded default;
- :mod:`.build` - building all of it from the settings (the ``run`` sub-command).

Nothing on the daemon's path imports torch, shap, pyod, scikit-learn, scipy or pyarrow: the
model is loaded from safetensors (numpy arrays, the forest's trees included), scored in numpy
and explained with numpy TreeSHAP and expected gradients (``tests/test_torch_free.py`` checks
the import closure and the RSS budget).
"""
