"""The Dockerfile, checked without a Docker engine.

A small parser turns the file into instructions (comments, continuation lines); the tests
check its structure (multi-stage, non-root final stage, entrypoint), that every COPY source
exists and is not excluded by .dockerignore, that torch is the version pinned in
pyproject.toml and requirements.lock, that every package installed by name is pinned as in
the lock, and that the lock filter keeps everything but torch and its CUDA wheels.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from detector.pipeline import default_model_dir

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
})


@dataclass(frozen=True)
class Instruction:
    cmd: str
    args: str
    line: int  # first line, 1-based


class DockerfileError(ValueError):
    pass


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments and blank lines dropped, ``\\`` continuations
    joined (comment lines inside a continuation skipped, as Docker does); instructions must
    be upper-case and known."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(p for p in buf if p)
        buf = []
        word, _, rest = joined.partition(" ")
        if word != word.upper():
            raise DockerfileError(f"line {start}: instruction {word!r} is not upper-case")
        if word not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: unknown instruction {word!r}")
        out.append(Instruction(word, rest.strip(), start))
    if buf:
        raise DockerfileError("the file ends inside a continuation")
    return out


def stages(ins: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for i in ins:
        if i.cmd == "FROM":
            out.append([])
        if not out:
            if i.cmd == "ARG":  # an ARG before the first FROM is allowed
                continue
            raise DockerfileError(f"line {i.line}: {i.cmd} before FROM")
        out[-1].append(i)
    return out


def arg_defaults(ins: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in ins:
        if i.cmd == "ARG" and "=" in i.args:
            k, _, v = i.args.partition("=")
            out[k.strip()] = v.strip()
    return out


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pin(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}==([^"]+)"', text)
    assert m, f"{package} is not pinned in pyproject.toml"
    return m.group(1)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


# ------------------------------------------------------------------ the parser itself


def test_parser_joins_continuations_and_skips_comments() -> None:
    ins = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n  # inside\n    && y\n\nUSER 1\n")
    assert [(i.cmd, i.args, i.line) for i in ins] == [
        ("FROM", "a AS b", 2), ("RUN", "x && y", 3), ("USER", "1", 7)]


@pytest.mark.parametrize("text", ["from a\n", "FROM a\nFETCH b\n", "FROM a\nRUN x \\\n"])
def test_parser_refuses_lower_case_unknown_and_dangling(text: str) -> None:
    with pytest.raises(DockerfileError):
        parse_dockerfile(text)


# ------------------------------------------------------------------ structure


def test_multi_stage_slim_python_non_root_final_stage(dockerfile: list[Instruction]) -> None:
    st = stages(dockerfile)
    assert len(st) >= 2
    for s in st:
        assert s[0].args.split()[0] == "python:3.11-slim", s[0]
    final = st[-1]
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001", users[-1]
    entry = [i for i in final if i.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].args == '["podguard", "run"]'
    # the builder builds the wheel; the runtime installs it without dependencies
    assert any(i.cmd == "RUN" and "pip wheel --no-deps" in i.args for i in st[0])
    assert any(i.cmd == "RUN" and re.search(r"pip install --no-deps /wheels/\S+\.whl", i.args)
               for i in final)


def _copies(dockerfile: list[Instruction]) -> list[tuple[list[str], str]]:
    out = []
    for i in dockerfile:
        if i.cmd != "COPY":
            continue
        words = shlex.split(i.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            rules.append((neg, line.lstrip("!").rstrip("/")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent
    directory excludes what is under it."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for neg, pattern in rules:
        pat = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], pat)
               for p in prefixes):
            ignored = not neg
    return ignored


def test_every_copy_source_exists_and_is_in_the_build_context(
        dockerfile: list[Instruction]) -> None:
    rules = _dockerignore()
    copies = _copies(dockerfile)
    assert copies
    for sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
            assert not _ignored(src, rules), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_the_rest_out() -> None:
    rules = _dockerignore()
    for path in (".venv", ".git", "tests", "out", "data/scenarios", "detector/__pycache__"):
        assert _ignored(path, rules), f"{path} would be sent to the Docker daemon"
    assert not _ignored("data/model", rules)


def test_default_model_is_copied_where_the_lookup_finds_it(
        dockerfile: list[Instruction], monkeypatch: pytest.MonkeyPatch) -> None:
    dest = dict((tuple(s), d) for s, d in _copies(dockerfile))[("data/model",)]
    env = " ".join(i.args for i in dockerfile if i.cmd == "ENV")
    m = re.search(r"PODGUARD_DEFAULT_MODEL=(\S+)", env)
    assert m and m.group(1) == dest, (env, dest)
    monkeypatch.setenv("PODGUARD_DEFAULT_MODEL", dest)
    assert default_model_dir() == Path(dest)
    current = (ROOT / "data/model/current").read_text().strip()
    assert (ROOT / "data/model" / current).is_dir()


# ------------------------------------------------------------------ pins


def test_torch_version_is_the_pinned_one(dockerfile: list[Instruction]) -> None:
    args = arg_defaults(dockerfile)
    assert args["TORCH_VERSION"] == pyproject_pin("torch") == lock_pins()["torch"]
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(i.args for i in dockerfile if i.cmd == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    assert '--index-url "${TORCH_INDEX}"' in runs


def _installed_by_name(dockerfile: list[Instruction]) -> list[str]:
    """Requirement words of every ``pip install`` (files, wheels and options left out),
    with ARG defaults substituted."""
    args = arg_defaults(dockerfile)
    reqs: list[str] = []
    for i in dockerfile:
        if i.cmd != "RUN":
            continue
        for command in re.split(r"&&|;", i.args):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            skip = False
            for w in words[2:]:
                if skip:
                    skip = False
                    continue
                if w in ("-r", "-c", "--index-url", "--extra-index-url", "-i"):
                    skip = True
                    continue
                if w.startswith("-") or w.startswith("/"):
                    continue
                reqs.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], w))
    return reqs


def test_every_package_installed_by_name_is_pinned_as_in_the_lock(
        dockerfile: list[Instruction]) -> None:
    reqs = _installed_by_name(dockerfile)
    assert reqs, "no package installed by name (the torch install was not found)"
    pins = lock_pins()
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", r)
        assert m, f"{r!r} is not pinned exactly"
        assert pins.get(_norm(m.group(1))) == m.group(2), f"{r} differs from requirements.lock"


def test_lock_filter_drops_only_torch_and_its_cuda_wheels(dockerfile: list[Instruction]) -> None:
    run = next(i.args for i in dockerfile if i.cmd == "RUN" and "grep -Ev" in i.args)
    pattern = shlex.split(run)[2]
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    dropped = {line.split("==")[0] for line in lock if re.search(pattern, line)}
    kept = {line.split("==")[0] for line in lock} - dropped
    assert "torch" in dropped and "triton" in dropped
    assert all(n in ("torch", "triton") or n.startswith(("nvidia-", "cuda-")) for n in dropped)
    for needed in ("numpy", "scipy", "scikit-learn", "safetensors", "skops", "kubernetes",
                   "prometheus_client", "kafka-python", "pydantic", "PyYAML", "filelock",
                   "sympy", "networkx", "Jinja2", "fsspec", "typing_extensions"):
        assert needed in kept, needed
    assert "-c /tmp/requirements.lock" in run  # torch's own dependencies held to the lock
