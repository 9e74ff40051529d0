"""Renders the Kustomize manifests of ``deploy/kustomize`` with the real ``kustomize`` binary.

Used by the deploy tests and by hand (``python -m deploy.render --help``). Nothing here
re-implements Kustomize: the binary is ``sigs.k8s.io/kustomize/kustomize/v5`` at
:data:`KUSTOMIZE_VERSION`, compiled once per machine from its published Go module (through the
Go module proxy) into ``cache_dir()/kustomize-<version>/kustomize``, like the local stack's
other Go binaries (:mod:`deploy.local.k8s_build`). ``kubectl apply -k`` / ``kubectl kustomize``
(which embed Kustomize) read the same directories; the tests pin one version so that results
never depend on whichever kubectl is on PATH.

Commands:

- ``prepare``: build the binary if it is missing; print its path;
- ``build DIR [--namespace NS] [--suffix S]``: the rendered YAML of a kustomization, optionally
  moved to another namespace (ClusterRoleBinding subjects included) with every name suffixed;
- ``rules [--write PATH]``: the PrometheusRule's groups as a plain Prometheus rules file (what
  ``deploy/prometheus/rules.yml`` holds, for a Prometheus without the Operator).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from deploy.local._proc import StackError, cache_dir
from deploy.local.k8s_build import go_binary

KUSTOMIZE_VERSION = "v5.8.2"  # v5.8.3 needs Go >= 1.27
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE_DIR = ROOT / "deploy" / "kustomize"
BASE = KUSTOMIZE_DIR / "base"
OVERLAYS: dict[str, Path] = {"alert-only": KUSTOMIZE_DIR / "overlays" / "alert-only",
                             "remediate": KUSTOMIZE_DIR / "overlays" / "remediate"}
MONITORING = KUSTOMIZE_DIR / "components" / "monitoring"
CRDS = ROOT / "deploy" / "crds"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yml"

Doc = dict[str, Any]


def kustomize_binary() -> Path:
    """Where the pinned kustomize lives (it may not be built yet: see :func:`prepare`)."""
    return cache_dir() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    with open(cache_dir() / "kustomize.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare() -> Path:
    """The kustomize binary, compiled first if it is missing (about 40 s on two cores).

    Built in a temporary directory and renamed into place, so an interrupted build never
    looks like a good one; a lock keeps two sessions from building it at once.
    """
    final = kustomize_binary()
    if final.is_file():
        return final
    with _build_lock():
        if final.is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".kustomize-tmp-", dir=cache_dir()))
        try:
            env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false",
                       GOBIN=str(tmp))
            proc = subprocess.run(
                [go_binary(), "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                check=False)
            if proc.returncode != 0:
                raise StackError(f"building kustomize {KUSTOMIZE_VERSION} failed (go install, "
                                 f"exit {proc.returncode}):\n{proc.stdout[-4000:]}")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "kustomize", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_text(path: str | Path) -> str:
    """``kustomize build PATH`` as YAML text (StackError with kustomize's message)."""
    proc = subprocess.run([str(prepare()), "build", str(path)], capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        raise StackError(f"kustomize build {path} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()}")
    return proc.stdout


def build(path: str | Path) -> list[Doc]:
    """``kustomize build PATH`` as a list of objects, in Kustomize's output order."""
    return [d for d in yaml.safe_load_all(build_text(path)) if d]


def relocation(path: str | Path, workdir: Path, *, namespace: str, suffix: str) -> Path:
    """A kustomization in ``workdir`` that installs ``path`` into ``namespace`` with ``suffix``
    added to every name; returns ``workdir``.

    Kustomize's ``namespace:`` field renames the Namespace object and moves namespaced ones,
    but leaves ClusterRoleBinding subjects in their old namespace unless it was ``default``;
    a NamespaceTransformer with ``setRoleBindingSubjects: allServiceAccounts`` after it moves
    them too (deploy/README.md shows the same for installing podguard elsewhere).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(path).resolve(), workdir.resolve())
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel], "namespace": namespace, "nameSuffix": suffix,
        "transformers": ["namespace.yaml"]}))
    (workdir / "namespace.yaml").write_text(yaml.safe_dump({
        "apiVersion": "builtin", "kind": "NamespaceTransformer",
        "metadata": {"name": "relocate", "namespace": namespace},
        "setRoleBindingSubjects": "allServiceAccounts", "unsetOnly": False}))
    return workdir


def build_relocated(path: str | Path, *, namespace: str, suffix: str) -> list[Doc]:
    """:func:`build` of ``path`` moved by :func:`relocation` (in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="podguard-kustomize-") as tmp:
        return build(relocation(path, Path(tmp), namespace=namespace, suffix=suffix))


def load_crds() -> list[Doc]:
    """The project's copies of the CustomResourceDefinitions the monitoring objects need."""
    return build(CRDS)


def prometheus_rules(objects: Sequence[Doc]) -> Doc:
    """The ``spec.groups`` of every PrometheusRule in ``objects`` as one rules file."""
    groups: list[Any] = []
    for o in objects:
        if o.get("kind") == "PrometheusRule":
            groups.extend(o["spec"]["groups"])
    if not groups:
        raise ValueError("no PrometheusRule among the objects")
    # Kustomize sorts keys; a rules file reads better in the documentation's order.
    order = {k: i for i, k in enumerate(("name", "interval", "alert", "record", "expr", "for",
                                         "keep_firing_for", "labels", "annotations", "rules"))}

    def ordered(d: dict[str, Any]) -> dict[str, Any]:
        return dict(sorted(d.items(), key=lambda kv: order.get(kv[0], len(order))))

    return {"groups": [ordered({**g, "rules": [ordered(r) for r in g["rules"]]})
                       for g in groups]}


RULES_HEADER = (
    "# Generated from deploy/kustomize/components/monitoring/prometheusrule.yaml by\n"
    "#   python -m deploy.render rules --write deploy/prometheus/rules.yml\n"
    "# Do not edit by hand: tests/test_deploy_manifests.py checks that it is current.\n"
    "# For a Prometheus without the Operator: list this file under rule_files.\n"
)


def rules_text() -> str:
    """The plain rules file, as :data:`RULES_FILE` must hold it."""
    return RULES_HEADER + yaml.safe_dump(prometheus_rules(build(MONITORING)), sort_keys=False,
                                         width=100)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="build the pinned kustomize if missing; print its path")
    b = sub.add_parser("build", help="render a kustomization")
    b.add_argument("dir", type=Path)
    b.add_argument("--namespace", default=None, help="move everything to this namespace")
    b.add_argument("--suffix", default="", help="with --namespace: suffix of every name")
    r = sub.add_parser("rules", help="the PrometheusRule's groups as a plain rules file")
    r.add_argument("--write", type=Path, default=None, help="write here instead of stdout")
    args = p.parse_args(argv)
    try:
        if args.command == "prepare":
            print(prepare())
        elif args.command == "build" and args.namespace:
            docs = build_relocated(args.dir, namespace=args.namespace, suffix=args.suffix)
            sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
        elif args.command == "build":
            sys.stdout.write(build_text(args.dir))
        else:
            text = rules_text()
            if args.write is None:
                sys.stdout.write(text)
            else:
                tmp = args.write.with_name(f".{args.write.name}.tmp")
                tmp.write_text(text)
                os.replace(tmp, args.write)
    except StackError as e:
        print(f"deploy.render: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
