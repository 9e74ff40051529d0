"""How podguard talks to the services around it, in one place.

- :mod:`.retry`: the one retry policy (tenacity; temporary vs permanent errors decide;
  ``Retry-After`` honoured);
- :mod:`.http`: the HTTP client of Prometheus and Alertmanager calls (TLS verified, client
  certificates, bearer token or basic auth from files re-read on change, extra headers);
- :mod:`.prometheus`: the one Prometheus client (chunked range queries) of the source and of
  retraining;
- :mod:`.kafka`: TLS and SASL (SCRAM) settings of the Kafka clients.

Imports only :mod:`detector.settings` and :mod:`detector.errors` from podguard; used by
sources, sinks and training. Never imports torch.
"""
