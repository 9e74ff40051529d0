"""The Dockerfile, checked without a Docker engine (none exists on the build machine).

A small parser turns the file into instructions (comments, continuation lines, ARG
substitution); the tests check its structure (multi-stage slim Python 3.11, non-root final
stage, ``podguard run`` entrypoint), that every COPY source exists and is inside the build
context that .dockerignore leaves, that the daemon's image (the final stage) holds exactly the
runtime lock (requirements-daemon.lock, closed under its own requirements, no torch), that
torch in the ``train`` stage is the version pinned in pyproject.toml and requirements.lock
(the CPU variant by default), that every package installed by name is pinned and the train
image's wheel is installed under the full lock as constraints, and they run the builder
stage's wheel build for real on exactly the files its COPY lines bring in.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
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


def global_args(ins: list[Instruction]) -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults (usable in FROM lines and,
    re-declared without a value, inside a stage)."""
    out: dict[str, str] = {}
    for i in ins:
        if i.cmd == "FROM":
            break
        if i.cmd == "ARG":
            k, _, v = i.args.partition("=")
            out[k.strip()] = v.strip()
    return out


def stages(ins: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage, its FROM first."""
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


def stage_args(ins: list[Instruction], stage: list[Instruction]) -> dict[str, str]:
    """The build arguments visible in ``stage`` with their defaults: its own ARGs, a bare
    ``ARG NAME`` taking the global default, as Docker does."""
    glob = global_args(ins)
    out: dict[str, str] = {}
    for i in stage:
        if i.cmd == "ARG":
            k, eq, v = i.args.partition("=")
            k = k.strip()
            if eq:
                out[k] = v.strip()
            elif k in glob:
                out[k] = glob[k]
            else:
                raise DockerfileError(f"line {i.line}: ARG {k} has no default anywhere")
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    """``${NAME}`` and ``$NAME`` replaced by the argument's default (unknown ones refused)."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in args:
            raise DockerfileError(f"${name} is not a build argument of this stage")
        return args[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(name: str = "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


def pyproject_dependencies(extra: str | None = None) -> dict[str, str]:
    """``name -> version`` of the runtime dependencies in pyproject.toml (all pinned), or of
    one extra's own pins (its ``podguard[...]`` self-references left out)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] if extra is None else [
        d for d in project["optional-dependencies"][extra] if not d.startswith("podguard[")]
    out: dict[str, str] = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", d)
        assert m, f"pyproject.toml dependency {d!r} is not pinned exactly"
        out[_norm(m.group(1))] = m.group(2)
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stage_named(ins: list[Instruction], name: str) -> list[Instruction]:
    for st in stages(ins):
        if st[0].args.split(" AS ")[-1].strip() == name:
            return st
    raise AssertionError(f"no stage {name!r}")


def _runs(ins: list[Instruction], stage: list[Instruction]) -> list[list[str]]:
    """Every shell command of the stage's RUN lines, split on ``&&``, ARGs substituted."""
    args = stage_args(ins, stage)
    out = []
    for i in stage:
        if i.cmd == "RUN":
            out += [shlex.split(substitute(c, args)) for c in i.args.split("&&")]
    return out


# ------------------------------------------------------------------ the parser itself


def test_parser_joins_continuations_and_skips_comments() -> None:
    ins = parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n  # inside\n    && y\n\nUSER 1\n")
    assert [(i.cmd, i.args, i.line) for i in ins] == [
        ("FROM", "a AS b", 2), ("RUN", "x && y", 3), ("USER", "1", 7)]


@pytest.mark.parametrize("text", ["from a\n", "FROM a\nFETCH b\n", "FROM a\nRUN x \\\n",
                                  "RUN x\nFROM a\n"])
def test_parser_refuses_lower_case_unknown_dangling_and_run_before_from(text: str) -> None:
    with pytest.raises(DockerfileError):
        stages(parse_dockerfile(text))


def test_arguments_global_defaults_and_substitution() -> None:
    ins = parse_dockerfile("ARG IMG=py:1\nARG V=2\nFROM ${IMG} AS s\nARG V\nARG W=x\n"
                           "RUN echo ${V}-$W\n")
    [st] = stages(ins)
    args = stage_args(ins, st)
    assert args == {"V": "2", "W": "x"}
    assert substitute(st[0].args, global_args(ins)) == "py:1 AS s"
    assert _runs(ins, st) == [["echo", "2-x"]]
    with pytest.raises(DockerfileError):
        substitute("${IMG}", args)  # a global ARG is not visible in a stage unless declared


# ------------------------------------------------------------------ structure


def test_multi_stage_slim_python_non_root_final_stage(dockerfile: list[Instruction]) -> None:
    st = stages(dockerfile)
    assert len(st) >= 2, "not a multi-stage build"
    for s in st:
        image, _, name = substitute(s[0].args, global_args(dockerfile)).partition(" AS ")
        assert image.startswith("python:3.11-slim"), image
        assert name, f"line {s[0].line}: unnamed stage"
    final = st[-1]
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user == "10001" and group == "10001", users[-1]  # numeric: runAsNonRoot can check
    entry = [i for i in final if i.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].args == '["podguard", "run"]'  # exec form: signals reach it
    assert substitute(final[0].args, global_args(dockerfile)).endswith(" AS daemon")
    # the builder builds the wheel; daemon-env installs it into the venv the daemon copies
    assert any(w[:4] == ["pip", "wheel", "--no-deps", "--no-build-isolation"]
               for w in _runs(dockerfile, st[0]))
    env_stage = stage_named(dockerfile, "daemon-env")
    copies_from = [shlex.split(i.args) for i in env_stage if i.cmd == "COPY" and "--from" in i.args]
    assert ["--from=builder", "/wheels", "/wheels"] in copies_from
    assert any(w[:2] == ["pip", "--python"] and "/wheels/podguard-*.whl" in w
               for w in _runs(dockerfile, env_stage))
    final_copies = [shlex.split(i.args) for i in final if i.cmd == "COPY" and "--from" in i.args]
    assert final_copies == [["--from=daemon-env", "/opt/podguard/venv", "/opt/podguard/venv"]]
    env = " ".join(i.args for i in final if i.cmd == "ENV")
    assert "PATH=/opt/podguard/venv/bin:$PATH" in env  # `podguard` and `python` are the venv's
    assert not [i for i in final if i.cmd == "RUN" and "pip" in i.args]  # nothing else added


def _copies(dockerfile: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
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


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore patterns as regular expressions, Docker's way: ``*`` and ``?`` stay
    within one path segment, ``**`` crosses them, a leading ``/`` is dropped."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        rules.append((neg, re.compile(rx + r"\Z")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_matcher() -> None:
    rules = [(False, re.compile(r"[^/]*\Z")), (True, re.compile(r"data/model\Z")),
             (False, re.compile(r"(?:.*/)?__pycache__\Z"))]
    assert _ignored("tests/x.py", rules) and _ignored("data/scenarios", rules)
    assert not _ignored("data/model/current", rules)
    assert _ignored("data/model/__pycache__/a.pyc", rules)


def test_every_copy_source_exists_and_is_in_the_build_context(
        dockerfile: list[Instruction]) -> None:
    rules = _dockerignore()
    copies = _copies(dockerfile)
    assert copies
    for sources, _dest in copies:
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: no such path in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [f for f in files if not _ignored(str(f.relative_to(ROOT)), rules)]
            assert kept, f"COPY {src}: excluded by .dockerignore"
            if src == "detector":
                assert any(f.name == "cli.py" for f in kept)


def test_dockerignore_keeps_the_rest_out() -> None:
    rules = _dockerignore()
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "out/demo",
                 "data/scenarios", "deploy/render.py", "detector/__pycache__/cli.cpython.pyc",
                 "Makefile", "some-new-directory/big.bin"):
        assert _ignored(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("data/model/current", "detector/cli.py", "requirements.lock", "README.md",
                 "requirements-daemon.lock", "LICENSE"):
        assert not _ignored(path, rules), path


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


@pytest.mark.parametrize("extra", [None, "train", "eval", "dev"])
def test_pyproject_pins_agree_with_the_lock(extra: str | None) -> None:
    lock = lock_pins()
    for name, version in pyproject_dependencies(extra).items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"


def test_torch_is_the_pinned_version_cpu_by_default(dockerfile: list[Instruction]) -> None:
    train = stage_named(dockerfile, "train")
    args = stage_args(dockerfile, train)
    assert args["TORCH_VERSION"] == pyproject_dependencies("train")["torch"] == lock_pins()["torch"]
    assert args["TORCH_VARIANT"] == "cpu"
    [torch] = [w for w in _runs(dockerfile, train) if "torch==2.15.0+cpu" in w]
    assert torch[:3] == ["pip", "install", "--no-deps"], torch
    assert torch[torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"


def _installed(dockerfile: list[Instruction]) -> list[tuple[list[str], list[str]]]:
    """(options, requirements) of every ``pip install`` of every stage, ARGs substituted."""
    out = []
    for st in stages(dockerfile):
        for words in _runs(dockerfile, st):
            if words[:2] == ["pip", "--python"]:  # pip installing into another interpreter
                words = ["pip", *words[3:]]
            if words[:2] != ["pip", "install"]:
                continue
            opts: list[str] = []
            reqs: list[str] = []
            skip = False
            for w in words[2:]:
                if skip:
                    opts[-1] += f" {w}"
                    skip = False
                elif w in ("-r", "-c", "--index-url", "--extra-index-url", "-i", "--find-links"):
                    opts.append(w)
                    skip = True
                elif w.startswith("-"):
                    opts.append(w)
                else:
                    reqs.append(w)
            out.append((opts, reqs))
    return out


def test_every_package_installed_by_name_is_pinned_as_in_the_lock(
        dockerfile: list[Instruction]) -> None:
    pins = lock_pins()
    setuptools = global_args(dockerfile)["SETUPTOOLS_VERSION"]
    by_name = [r for _, reqs in _installed(dockerfile) for r in reqs if not r.startswith("/")]
    assert "torch==2.15.0+cpu" in by_name
    assert f"setuptools=={setuptools}" in by_name
    import tomllib

    podguard = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    pins["podguard"] = podguard  # the wheel just built, by its version
    assert f"podguard[train]=={podguard}" in by_name
    for r in by_name:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([A-Za-z0-9_.-]+)(\+[a-z0-9.]+)?",
                         r)
        assert m, f"{r!r} is not pinned exactly"
        name, version = _norm(m.group(1)), m.group(2)
        assert pins.get(name) == version, f"{r} differs from requirements.lock"


def test_the_builder_stage_uses_the_locked_setuptools(dockerfile: list[Instruction]) -> None:
    builder = stages(dockerfile)[0]
    assert stage_args(dockerfile, builder)["SETUPTOOLS_VERSION"] == lock_pins()["setuptools"]
    assert any(f"setuptools=={lock_pins()['setuptools']}" in w
               for w in _runs(dockerfile, builder))


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-daemon.lock"])
def test_the_lock_holds_every_dependency_of_what_it_pins(lock: str) -> None:
    """Each lock is closed under the installed packages' own requirements (markers evaluated
    for this interpreter, no extras), pins included: ``pip freeze`` leaves setuptools out
    although torch requires it, an unpinned package takes whatever version is newest, and the
    daemon's image installs its lock with ``--no-deps``, so a gap would be a missing module."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = lock_pins(lock)
    problems = []
    for name in sorted(pins):
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is in the lock but not installed (make venv)")
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            pinned = pins.get(_norm(req.name))
            if pinned is None:
                problems.append(f"{name} requires {req.name}, which the lock does not pin")
            elif not req.specifier.contains(pinned, prereleases=True):
                problems.append(f"{name} requires {text}; the lock has {pinned}")
    assert problems == []


def test_the_daemon_lock_is_the_runtime_set_at_the_full_locks_versions() -> None:
    daemon, full = lock_pins("requirements-daemon.lock"), lock_pins()
    assert {k: full.get(k) for k in daemon} == daemon
    assert pyproject_dependencies().items() <= daemon.items()
    for heavy in ("torch", "shap", "pyod", "numba", "matplotlib", "scikit-learn", "scipy",
                  "skops", "pyarrow"):
        assert heavy not in daemon, heavy
        assert not any(n.startswith("nvidia-") for n in daemon)


def test_the_daemon_image_installs_exactly_the_runtime_lock(
        dockerfile: list[Instruction]) -> None:
    """daemon-env: the runtime lock as requirements with --no-deps (it is the whole closure),
    then the wheel with --no-deps; no torch, no full lock, in that stage or the final one."""
    env_stage = stage_named(dockerfile, "daemon-env")
    installs = []
    for words in _runs(dockerfile, env_stage):
        if words[:2] == ["pip", "--python"]:
            assert words[2] == "/opt/podguard/venv/bin/python", words
            installs.append(words[3:])
    assert installs == [["install", "--no-deps", "-r", "/tmp/requirements-daemon.lock"],
                        ["install", "--no-deps", "/wheels/podguard-*.whl"]]
    copied = [s for st in (env_stage, stages(dockerfile)[-1]) for i in st if i.cmd == "COPY"
              for s in shlex.split(i.args)[:-1]]
    assert "requirements-daemon.lock" in copied and "requirements.lock" not in copied
    assert not any("torch" in i.args for st in (env_stage, stages(dockerfile)[-1]) for i in st)


def test_the_train_image_installs_the_wheel_under_the_lock_as_constraints(
        dockerfile: list[Instruction]) -> None:
    """Constraints, not requirements: the lock's dev tools (pytest, mypy, ...) stay out, and
    every dependency that is installed has the lock's version."""
    train = stage_named(dockerfile, "train")
    lock_copies = [d for s, d in _copies(train) if s == ["requirements.lock"]]
    assert lock_copies, "requirements.lock is not copied into the train image"
    wheel_installs = [(o, r) for o, r in _installed(dockerfile)
                      if any(x.startswith("podguard[train]") for x in r)]
    assert len(wheel_installs) == 1
    opts, _ = wheel_installs[0]
    assert f"-c {lock_copies[0]}" in opts and "--find-links /wheels" in opts, opts
    assert "--no-deps" not in opts
    for o, _ in _installed(dockerfile):
        assert not any(x.startswith("-r /tmp/requirements.lock") for x in o), \
            f"the full lock installed as requirements: {o}"


def test_builder_stage_builds_the_wheel_from_exactly_its_copies(
        dockerfile: list[Instruction], tmp_path: Path) -> None:
    """The builder's COPY lines, replayed into a scratch directory, and its wheel command run
    there (with this environment's setuptools): the wheel holds both packages, the
    ``podguard`` entry point and pyproject's pinned dependencies."""
    builder = stages(dockerfile)[0]
    workdir = next(i.args for i in builder if i.cmd == "WORKDIR")
    src = tmp_path / "src"
    src.mkdir()
    for i in builder:
        if i.cmd != "COPY":
            continue
        *sources, dest = shlex.split(i.args)
        target = src / Path(dest).relative_to(workdir) if dest.startswith("/") else src / dest
        for s in sources:
            if (ROOT / s).is_dir():
                shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / s, target / Path(s).name)
    [wheel_cmd] = [w for w in _runs(dockerfile, builder) if w[:2] == ["pip", "wheel"]]
    out = tmp_path / "wheels"
    cmd = [sys.executable, "-m", *wheel_cmd]
    cmd[cmd.index("--wheel-dir") + 1] = str(out)
    r = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [whl] = out.glob("podguard-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert {"detector/cli.py", "detector/runtime/daemon.py", "training/job.py"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert re.search(r"^podguard\s*=\s*detector\.cli:main$", entry, re.M), entry
    requires = {_norm(m.group(1)): m.group(2)
                for m in re.finditer(r"^Requires-Dist: ([A-Za-z0-9_.-]+)==(\S+)$", meta, re.M)}
    assert requires == pyproject_dependencies()
