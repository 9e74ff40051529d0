"""Render a Kustomize directory of ``deploy/manifests`` in Python, without a kustomize binary.

Implements the part of Kustomize the podguard manifests use, and refuses the rest, so the
files stay valid Kustomize (``kubectl apply -k`` / ``kubectl kustomize`` give the same objects;
``tests/test_deploy_manifests.py`` compares the two where kubectl is installed):

- ``resources``: YAML files (several documents each) and directories with a
  ``kustomization.yaml``, rendered recursively, in order;
- ``namespace``: set on every namespace-scoped object; a ``Namespace`` object is renamed to it
  (as Kustomize 5 does); RoleBinding subjects are left as written;
- ``patches``: from ``path`` or inline ``patch``, either a strategic-merge patch (a mapping;
  target = its kind and name unless ``target`` is given) or a JSON patch (RFC 6902: a list of
  ``add``/``replace``/``remove`` operations; needs ``target``).

Strategic merge follows the Kubernetes rules for the fields used here: mappings merge
recursively, ``null`` deletes a key, lists of containers/volumes/env/ports/volumeMounts merge
by their merge key, any other list is replaced. ``$patch`` directives are refused.

Used by the deploy tests and by hand::

    python -m deploy.render deploy/manifests/overlays/alert-only > podguard.yaml

:func:`relocate` renames the namespace and suffixes the cluster-scoped names of a rendering,
so a second copy (a test's) can live beside the first.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
_KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches"}

CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "Node",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
})
"""Kinds that take no ``metadata.namespace``."""

# Strategic-merge keys of the list fields used in the manifests (from the Kubernetes API's
# patchMergeKey tags). A list field not named here is replaced by the patch's list.
MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "ports": "containerPort",
    "volumeMounts": "mountPath", "imagePullSecrets": "name",
}

Doc = dict[str, Any]


class RenderError(ValueError):
    """A kustomization this renderer cannot render the way Kustomize would."""


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping (YAML allows the parser to
    keep either; PyYAML keeps the last, Kustomize merges them)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise RenderError(f"duplicate key {key!r} {key_node.start_mark}")
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(text: str) -> Any:
    """One YAML document, duplicate keys refused."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass


def load_docs(path: Path) -> list[Doc]:
    """The non-empty YAML documents of one file (duplicate keys refused)."""
    loaded = yaml.load_all(path.read_text(), Loader=_StrictLoader)
    docs = [d for d in loaded if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise RenderError(f"{path}: every document must be an object with apiVersion/kind")
    return docs


def render(directory: str | Path) -> list[Doc]:
    """The objects of the kustomization in ``directory``, in resource order."""
    root = Path(directory)
    kfile = root / KUSTOMIZATION
    if not kfile.is_file():
        raise RenderError(f"{root}: no {KUSTOMIZATION}")
    k = load_yaml(kfile.read_text()) or {}
    unknown = set(k) - _KNOWN_KEYS
    if unknown:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)} "
                          "(extend deploy/render.py or use kubectl kustomize)")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        target = (root / entry).resolve()
        docs.extend(render(target) if target.is_dir() else load_docs(target))
    seen: set[tuple[str, str, str]] = set()
    for d in docs:
        key = _identity(d)
        if key in seen:
            raise RenderError(f"{kfile}: {key} is defined twice")
        seen.add(key)
    for p in k.get("patches", []):
        docs = _apply_patch(docs, p, root)
    if "namespace" in k:
        docs = [set_namespace(d, str(k["namespace"])) for d in docs]
    return docs


def _identity(d: Doc) -> tuple[str, str, str]:
    meta = d.get("metadata") or {}
    return d["kind"], str(meta.get("namespace", "")), str(meta.get("name", ""))


def set_namespace(doc: Doc, namespace: str) -> Doc:
    """``doc`` with the Kustomize ``namespace`` transformer applied."""
    out = copy.deepcopy(doc)
    meta = out.setdefault("metadata", {})
    if out["kind"] == "Namespace":
        meta["name"] = namespace
    elif out["kind"] not in CLUSTER_SCOPED:
        meta["namespace"] = namespace
    return out


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _matches(doc: Doc, target: dict[str, Any]) -> bool:
    group, version = _group_version(doc["apiVersion"])
    meta = doc.get("metadata") or {}
    want = {"group": group, "version": version, "kind": doc["kind"],
            "name": meta.get("name"), "namespace": meta.get("namespace")}
    for key, value in target.items():
        if key not in want:
            raise RenderError(f"unsupported patch target field {key!r}")
        if want[key] != value:
            return False
    return True


def _apply_patch(docs: list[Doc], entry: dict[str, Any], root: Path) -> list[Doc]:
    if "path" in entry:
        body = load_yaml((root / entry["path"]).read_text())
        where = str(root / entry["path"])
    elif "patch" in entry:
        body, where = load_yaml(entry["patch"]), f"{root}: inline patch"
    else:
        raise RenderError(f"{root}: a patch needs path or patch")
    target = entry.get("target")
    if isinstance(body, dict) and target is None:
        meta = body.get("metadata") or {}
        target = {"kind": body.get("kind"), "name": meta.get("name")}
    if not isinstance(body, list | dict):
        raise RenderError(f"{where}: a patch is a mapping or a list of operations")
    if target is None:
        raise RenderError(f"{where}: a JSON patch needs a target")
    hits = [i for i, d in enumerate(docs) if _matches(d, target)]
    if not hits:
        raise RenderError(f"{where}: no resource matches {target}")
    out = list(docs)
    for i in hits:
        out[i] = (_json_patch(out[i], body, where) if isinstance(body, list)  # RFC 6902
                  else _strategic_merge(out[i], body, where))
    return out


def _strategic_merge(doc: Doc, patch: Doc, where: str) -> Doc:
    return _merge_map(copy.deepcopy(doc), patch, where)


def _merge_map(base: dict[str, Any], patch: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"{where}: strategic-merge directive {key} is not supported")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge_map(base[key], value, where)
        elif isinstance(value, list) and isinstance(base.get(key), list) and key in MERGE_KEYS:
            base[key] = _merge_list(base[key], value, MERGE_KEYS[key], where)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_list(base: list[Any], patch: list[Any], key: str, where: str) -> list[Any]:
    out = list(base)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise RenderError(f"{where}: list items must be mappings with {key!r}")
        for i, old in enumerate(out):
            if isinstance(old, dict) and old.get(key) == item[key]:
                out[i] = _merge_map(copy.deepcopy(old), item, where)
                break
        else:
            out.append(copy.deepcopy(item))
    return out


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"{where}: JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Doc, ops: list[dict[str, Any]], where: str) -> Doc:
    out = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get("op"), _pointer(str(op.get("path", "")), where)
        parent: Any = out
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), value)
            else:
                parent[last] = value
        elif kind == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            elif last not in parent:
                raise RenderError(f"{where}: replace of missing {op['path']}")
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise RenderError(f"{where}: JSON patch op {kind!r} is not supported")
    return out


def relocate(docs: Iterable[Doc], namespace: str, suffix: str = "") -> list[Doc]:
    """A copy of a rendering in another namespace, cluster-scoped names given ``suffix``.

    Also retargets what refers to them: ClusterRoleBinding roleRefs and ServiceAccount
    subjects (every subject that named the old namespace).
    """
    docs = list(docs)
    old = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    old |= {d["metadata"]["namespace"] for d in docs if "namespace" in d.get("metadata", {})}
    out: list[Doc] = []
    for d in docs:
        d = set_namespace(d, namespace)
        if d["kind"] in CLUSTER_SCOPED and d["kind"] != "Namespace":
            d["metadata"]["name"] += suffix
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            if d["roleRef"]["kind"] == "ClusterRole":
                d["roleRef"]["name"] += suffix
            for s in d.get("subjects", []):
                if s.get("namespace") in old:
                    s["namespace"] = namespace
        out.append(d)
    return out


def dump(docs: Sequence[Doc]) -> str:
    """Multi-document YAML of ``docs``."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", type=Path, help="a directory with a kustomization.yaml")
    p.add_argument("--namespace", default=None, help="install into this namespace instead")
    p.add_argument("--suffix", default="", help="with --namespace: suffix of cluster-scoped "
                                                "names (ClusterRole, binding)")
    args = p.parse_args(argv)
    try:
        docs = render(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    if args.namespace:
        docs = relocate(docs, args.namespace, args.suffix)
    sys.stdout.write(dump(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
