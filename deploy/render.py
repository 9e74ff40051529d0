"""Renders the Kustomize manifests of ``deploy/kustomize`` with the real ``kustomize`` binary.

Used by the deploy tests and by hand (``python -m deploy.render --help``). Nothing here
re-implements Kustomize: the binary is ``sigs.k8s.io/kustomize/kustomize/v5`` at
:data:`KUSTOMIZE_VERSION`, compiled once per machine from its published Go module (through the
Go module proxy) into ``cache_dir()/kustomize-<version>/kustomize``, like the local stack's
other Go binaries (:mod:`deploy.local.k8s_build`). ``kubectl apply -k`` / ``kubectl kustomize``
(which embed Kustomize) read the same directories; the tests pin one version so that results
never depend on whichever kubectl is on PATH.

Commands:

- ``prepare``: build kustomize and helm if missing; print their paths;
- ``build DIR [--namespace NS] [--suffix S]``: the rendered YAML of a kustomization, optionally
  moved to another namespace (ClusterRoleBinding subjects included) with every name suffixed;
- ``rules [--write PATH]``: the PrometheusRule's groups as a plain Prometheus rules file (what
  ``deploy/prometheus/rules.yml`` holds, for a Prometheus without the Operator);
- ``chart-files [--write]``: the files the Helm chart reads (``deploy/helm/podguard/files``):
  the ClusterRole rules of each mode, generated from the Kustomize overlays (whose remediate
  rules are ``detector/remediation/rbac.py``), and the meta-alerts (the rules file above), so
  the chart and the overlays cannot drift apart (the tests check the files are current);
- ``template [--set K=V ...]``: ``helm template`` of the chart with the pinned helm.

The Helm chart (``deploy/helm/podguard``) is rendered with ``helm`` from
``helm.sh/helm/v3/cmd/helm`` at :data:`HELM_VERSION`, built and cached the same way as
kustomize.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
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
HELM_VERSION = "v3.22.0"
HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
# `helm template` has no cluster to ask: the version it renders for (the local control plane's)
TEMPLATE_KUBE_VERSION = "v1.35.4"

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE_DIR = ROOT / "deploy" / "kustomize"
BASE = KUSTOMIZE_DIR / "base"
OVERLAYS: dict[str, Path] = {"alert-only": KUSTOMIZE_DIR / "overlays" / "alert-only",
                             "remediate": KUSTOMIZE_DIR / "overlays" / "remediate"}
MONITORING = KUSTOMIZE_DIR / "components" / "monitoring"
CRDS = ROOT / "deploy" / "crds"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yml"
CHART = ROOT / "deploy" / "helm" / "podguard"
CHART_FILES = CHART / "files"

Doc = dict[str, Any]


def kustomize_binary() -> Path:
    """Where the pinned kustomize lives (it may not be built yet: see :func:`prepare`)."""
    return cache_dir() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"


def helm_binary() -> Path:
    """Where the pinned helm lives (it may not be built yet: see :func:`prepare_helm`)."""
    return cache_dir() / f"helm-{HELM_VERSION}" / "helm"


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    with open(cache_dir() / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _go_install(final: Path, module: str, version: str) -> Path:
    """``go install module@version`` into ``final`` unless it exists.

    Built in a temporary directory and renamed into place, so an interrupted build never
    looks like a good one; a lock keeps two sessions from building it at once.
    """
    if final.is_file():
        return final
    name = final.name
    with _build_lock(name):
        if final.is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=cache_dir()))
        try:
            env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -buildvcs=false",
                       GOBIN=str(tmp))
            proc = subprocess.run(
                [go_binary(), "install", f"{module}@{version}"],
                cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                check=False)
            if proc.returncode != 0:
                raise StackError(f"building {name} {version} failed (go install, "
                                 f"exit {proc.returncode}):\n{proc.stdout[-4000:]}")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare() -> Path:
    """The kustomize binary, compiled first if it is missing (about 40 s on two cores)."""
    return _go_install(kustomize_binary(), KUSTOMIZE_MODULE, KUSTOMIZE_VERSION)


def prepare_helm() -> Path:
    """The helm binary, compiled first if it is missing (a few minutes on two cores)."""
    return _go_install(helm_binary(), HELM_MODULE, HELM_VERSION)


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
    # written as JSON (which is YAML) so that every string stays a string: PyYAML leaves a
    # suffix such as "-12e456" unquoted, which YAML 1.2 (kustomize's parser) reads as a number
    (workdir / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel], "namespace": namespace, "nameSuffix": suffix,
        "transformers": ["namespace.yaml"]}, indent=1) + "\n")
    (workdir / "namespace.yaml").write_text(json.dumps({
        "apiVersion": "builtin", "kind": "NamespaceTransformer",
        "metadata": {"name": "relocate", "namespace": namespace},
        "setRoleBindingSubjects": "allServiceAccounts", "unsetOnly": False}, indent=1) + "\n")
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


CHART_HEADER = (
    "# Generated from deploy/kustomize by\n"
    "#   python -m deploy.render chart-files --write\n"
    "# Do not edit by hand: tests/test_helm_chart.py checks that it is current.\n"
)


def chart_files() -> dict[Path, str]:
    """What each generated file under :data:`CHART_FILES` must hold."""
    out: dict[Path, str] = {}
    for mode, path in OVERLAYS.items():
        role = [d for d in build(path) if d.get("kind") == "ClusterRole"]
        if len(role) != 1:
            raise ValueError(f"{len(role)} ClusterRoles in overlay {mode}")
        out[CHART_FILES / "rbac" / f"{mode}.yaml"] = CHART_HEADER + (
            f"# The ClusterRole rules of overlays/{mode}.\n") + yaml.safe_dump(
            {"rules": role[0]["rules"]}, sort_keys=False)
    out[CHART_FILES / "prometheus-rules.yml"] = CHART_HEADER + rules_text()
    # What the remediate overlay adds beyond the ClusterRole and the settings: its extra
    # objects (e.g. a Role for its records, admission policies), rendered in namespace
    # "podguard" for the release "podguard" (templates/remediate.yaml moves them), and the
    # extra ports of the daemon's container.
    alert, rem = build(OVERLAYS["alert-only"]), build(OVERLAYS["remediate"])
    have = {(d["kind"], d["metadata"]["name"]) for d in alert}
    extra = [d for d in rem if (d["kind"], d["metadata"]["name"]) not in have
             and d["kind"] != "ConfigMap"]
    out[CHART_FILES / "remediate" / "objects.yaml"] = CHART_HEADER + (
        "# The objects overlays/remediate adds to alert-only (templates/remediate.yaml).\n"
        ) + yaml.safe_dump({"objects": extra}, sort_keys=False)

    def ports(docs: list[Doc]) -> list[Any]:
        ds = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
        c = next(c for c in ds["containers"] if c["name"] == "podguard")
        found: list[Any] = c.get("ports", [])
        return found

    base_ports = {p["name"] for p in ports(alert)}
    out[CHART_FILES / "remediate" / "ports.yaml"] = CHART_HEADER + (
        "# The daemon container's ports overlays/remediate adds (templates/daemonset.yaml).\n"
        ) + yaml.safe_dump({"ports": [p for p in ports(rem) if p["name"] not in base_ports]},
                           sort_keys=False)
    return out


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def helm_template_text(values: Doc | None = None, *, release: str = "podguard",
                       namespace: str = "podguard", chart: Path = CHART) -> str:
    """``helm template RELEASE CHART -n NAMESPACE -f VALUES`` with the pinned helm."""
    with tempfile.TemporaryDirectory(prefix="podguard-helm-") as tmp:
        vals = Path(tmp) / "values.yaml"
        vals.write_text(yaml.safe_dump(values or {}))
        proc = subprocess.run(
            [str(prepare_helm()), "template", release, str(chart), "--namespace", namespace,
             "-f", str(vals), "--kube-version", TEMPLATE_KUBE_VERSION],
            capture_output=True, text=True, check=False, timeout=120,
            env=helm_env(Path(tmp)))
    if proc.returncode != 0:
        raise StackError(f"helm template {chart} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()}")
    return proc.stdout


def helm_template(values: Doc | None = None, **kw: Any) -> list[Doc]:
    """:func:`helm_template_text` as a list of objects."""
    return [d for d in yaml.safe_load_all(helm_template_text(values, **kw)) if d]


def helm_env(home: Path) -> dict[str, str]:
    """An environment in which helm reads and writes nothing of the user's (its caches and
    configuration under ``home``)."""
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="build the pinned kustomize and helm if missing; print "
                                   "their paths")
    cf = sub.add_parser("chart-files", help="the Helm chart's generated files (RBAC, rules)")
    cf.add_argument("--write", action="store_true", help="write them (else: list stale ones)")
    t = sub.add_parser("template", help="helm template of deploy/helm/podguard")
    t.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                   help="a value (dotted key), e.g. --set mode=remediate")
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
            print(prepare_helm())
        elif args.command == "chart-files":
            stale = 0
            for path, text in chart_files().items():
                if args.write:
                    write_atomic(path, text)
                elif not path.is_file() or path.read_text() != text:
                    print(f"stale: {path.relative_to(ROOT)}")
                    stale += 1
            return 1 if stale else 0
        elif args.command == "template":
            values: Doc = {}
            for item in args.set:
                key, _, raw = item.partition("=")
                node = values
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(raw)
            sys.stdout.write(helm_template_text(values))
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
