"""The local real stack for development and tests: Prometheus, Alertmanager, Kafka, Kubernetes.

Every service runs as a process started by hand, bound to 127.0.0.1 on ports chosen at start,
with its state in one temporary directory. Command line: ``python -m deploy.local
up|down|status|env|prepare [SERVICE...]`` (:mod:`deploy.local.__main__`); orchestration in
:mod:`deploy.local.stack`; one module per service implementing
:class:`deploy.local._service.Service`; pytest fixtures in ``tests/support/stack_fixtures.py``.
"""
