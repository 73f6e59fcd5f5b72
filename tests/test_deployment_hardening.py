"""The deployment's hardening, read from docker-compose.yml, the Dockerfile, the Makefile and the lock files:
ports published on loopback, containers that run unprivileged on a read-only root file system and write only
where they must, and installs that check every downloaded file against a hash from a lock."""

import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
from compose_spec import PyCompose
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = "requirements.lock"
TEST_LOCK = "requirements-test.lock"
# The Dockerfile's user; serving runs with the same ids so that it reads every export the trainer writes.
IDS = "10001:10001"
# Where each service has to write; every other mount of it is read-only.
WRITES = {"trainer": {"/models", "/runs"}, "serving": set(), "client": set()}
TEST_TOOLS = {"pytest", "pytest-xdist", "ruff", "compose-spec"}


@pytest.fixture(scope="module")
def services():
    return PyCompose.from_yaml((ROOT / "docker-compose.yml").read_text()).to_spec().services


def _logical_lines(path: Path) -> list[str]:
    """The lines of a Dockerfile, Makefile or requirements file with backslash continuations joined."""
    return path.read_text().replace("\\\n", " ").splitlines()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """A lock file as {package: (version, hashes)}; every requirement line must pin one version."""
    pins = {}
    for line in _logical_lines(ROOT / name):
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        match = re.fullmatch(r"([\w.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", requirement)
        assert match, f"{name}: not one pinned version with sha256 hashes: {requirement!r}"
        package, version, hashes = match.groups()
        pins[_normalise(package)] = (version, frozenset(hashes.split()))
    return pins


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments)."""
    instructions = []
    for line in _logical_lines(ROOT / "Dockerfile"):
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def _pip_installs(command: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a shell command."""
    installs = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part.replace("$(BIN)/", ""))
        if words[:2] == ["pip", "install"]:
            installs.append(words[2:])
    return installs


def _uid(user: str) -> str:
    return user.split(":")[0]


def test_every_published_port_binds_loopback(services):
    published = [(name, port) for name, service in services.items() for port in service.ports or ()]
    assert published, "serving publishes its gRPC and REST ports"
    for name, port in published:
        host_ip = port.split(":")[0] if isinstance(port, str) and port.count(":") == 2 else None
        host_ip = getattr(port, "host_ip", host_ip)
        assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


@pytest.mark.parametrize("name", sorted(WRITES))
def test_every_service_runs_unprivileged(services, name):
    service = services[name]
    assert service.user == IDS
    assert set(service.cap_drop or ()) == {"ALL"}
    assert service.cap_add is None
    assert service.privileged in (None, False)
    assert "no-new-privileges:true" in (service.security_opt or ())


@pytest.mark.parametrize("name", sorted(WRITES))
def test_every_service_writes_only_its_volumes_and_tmp(services, name):
    service = services[name]
    assert service.read_only is True
    assert "/tmp" in {entry.split(":")[0] for entry in service.tmpfs or ()}
    for volume in service.volumes:
        _, target, *mode = volume.split(":")
        if target in WRITES[name]:
            assert mode == [], f"{name} writes to {target}"
        else:
            assert mode and "ro" in mode[0].split(","), f"{name} only reads {target}: mount it :ro"
    assert WRITES[name] <= {volume.split(":")[1] for volume in service.volumes}


def test_the_image_runs_as_the_services_user():
    users = [arguments for keyword, arguments in _dockerfile() if keyword == "USER"]
    assert users, "the image sets a user"
    assert _uid(users[-1]) not in ("0", "root")
    assert users[-1] == IDS
    last_run = max(i for i, (keyword, _) in enumerate(_dockerfile()) if keyword == "RUN")
    assert [keyword for keyword, _ in _dockerfile()].index("USER") > last_run


def test_the_image_installs_the_runtime_lock_with_hashes_and_nothing_unhashed():
    runs = [command for keyword, command in _dockerfile() if keyword == "RUN"]
    installs = [args for command in runs for args in _pip_installs(command)]
    hashed = [args for args in installs if "--require-hashes" in args]
    assert hashed, "the image installs its dependencies with --require-hashes"
    for args in hashed:
        assert args[args.index("-r") + 1] == RUNTIME_LOCK  # the test tools stay out of the image
    for args in installs:
        # The local package cannot be hashed: it may bring nothing else from an index.
        assert "--require-hashes" in args or {"--no-deps", "--no-build-isolation"} <= set(args), args


def test_make_installs_from_the_hashed_locks_and_reinstalls_when_one_changes():
    lines = _logical_lines(ROOT / "Makefile")
    start = next(i for i, line in enumerate(lines) if line.startswith("$(BIN)/.installed:"))
    assert {RUNTIME_LOCK, TEST_LOCK, "pyproject.toml"} <= set(lines[start].split(":", 1)[1].split())
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.extend(_pip_installs(line.strip()))
    assert any("--require-hashes" in args and TEST_LOCK in args for args in recipe)
    for args in recipe:
        assert "--require-hashes" in args or {"--no-deps", "--no-build-isolation"} <= set(args), args


@pytest.mark.parametrize("name", [RUNTIME_LOCK, TEST_LOCK])
def test_every_locked_package_carries_a_hash(name):
    pins = _lock(name)
    assert pins
    assert [package for package, (_, hashes) in pins.items() if not hashes] == []


def test_the_locks_pin_what_pyproject_pins_and_agree_with_each_other():
    runtime, test = _lock(RUNTIME_LOCK), _lock(TEST_LOCK)
    for requirement in map(Requirement, metadata.requires("mtl-pipeline")):
        (pin,) = requirement.specifier
        assert pin.operator == "==", requirement
        in_test_extra = requirement.marker is not None and requirement.marker.evaluate({"extra": "test"})
        for lock in (test,) if in_test_extra else (runtime, test):
            assert lock[_normalise(requirement.name)][0] == pin.version, requirement
    # The tests run with exactly what the image ships, plus the test tools, which the image leaves out.
    assert {package: test[package] for package in runtime} == runtime
    assert TEST_TOOLS <= set(test)
    assert TEST_TOOLS.isdisjoint(runtime)
