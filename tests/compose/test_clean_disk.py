"""clean_disk.sh on a real Docker engine: removes exactly one compose project's resources, nothing else.

Each test makes a throwaway project (its own COMPOSE_PROJECT_NAME, image tags and .env): a running container, a
volume and a network carrying its compose label, the way compose leaves them, plus look-alikes that must stay: the
same kinds under another project's label and without labels. No image is built: the project's "built images" are
tags of a throwaway image made from python:3.11-slim-bookworm, which must survive.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, make_env_file, require_docker_engine

SCRIPT = ROOT / "clean_disk.sh"
BASE = "python:3.11-slim-bookworm"
LABEL = "com.docker.compose.project"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, timeout=120)


def exists(kind: str, name: str) -> bool:
    return docker(kind, "inspect", name, check=False).returncode == 0


@pytest.fixture(scope="module")
def engine() -> None:
    require_docker_engine()
    if not exists("image", BASE):
        pytest.fail(f"{BASE} is not on the engine (tests/engine.sh up provides it)")


@dataclass
class Project:
    """A throwaway compose project's resources and the look-alikes that must survive clean_disk.sh."""

    name: str
    env: dict[str, str]
    images: list[str]  # the project's "built images" (AIRFLOW_IMAGE, MLFLOW_IMAGE): removed
    keep_image: str  # another tag of the same image: stays
    mine: dict[str, list[str]] = field(default_factory=dict)  # kind -> names carrying the project label
    others: dict[str, list[str]] = field(default_factory=dict)  # kind -> names that must stay

    def run(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], env=self.env, stdin=stdin, capture_output=True, text=True, timeout=300
        )


@pytest.fixture
def project(engine: None, tmp_path: Path) -> Iterator[Project]:
    name = f"cleandisktest{uuid.uuid4().hex[:8]}"
    other = f"cleandiskother{uuid.uuid4().hex[:8]}"
    images = [f"{name}-airflow:latest", f"{name}-mlflow:latest"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and not k.endswith("_IMAGE")}
    env |= {
        "COMPOSE_PROJECT_NAME": name,
        "COMPOSE_ENV_FILES": str(make_env_file(tmp_path / ".env")),
        "AIRFLOW_IMAGE": images[0],
        "MLFLOW_IMAGE": images[1],
    }
    p = Project(name, env, images, keep_image=f"{name}-keep:latest")
    # (label, container, volumes, network): the project's own, another project's, unlabelled ones.
    sets = [
        (name, f"{name}-ctr", [f"{name}-vol", f"{name}_mlruns"], f"{name}-net"),
        (other, f"{other}-ctr", [f"{other}-vol"], f"{other}-net"),
        (None, f"{name}-nolabel-ctr", [f"{name}-nolabel-vol"], f"{name}-nolabel-net"),
    ]
    for project_name, container, volumes, network in sets:
        target = p.mine if project_name == name else p.others
        for kind, names in (("container", [container]), ("volume", volumes), ("network", [network])):
            target.setdefault(kind, []).extend(names)
    p.others["image"] = [p.keep_image, BASE]
    seed = f"{name}-seed"
    try:
        # An image of its own (BASE's layers, another ID): removing it, even by ID, cannot touch BASE.
        docker("create", "--name", seed, BASE, "true")
        docker("commit", "--change", f"LABEL cleandisktest={name}", seed, p.keep_image)
        docker("rm", seed)
        for tag in images:
            docker("tag", p.keep_image, tag)
        for project_name, container, volumes, network in sets:
            labels = ["--label", f"{LABEL}={project_name}"] if project_name else []
            for volume in volumes:
                docker("volume", "create", *labels, volume)
            docker("network", "create", *labels, network)
            mounts = [arg for volume in volumes for arg in ("-v", f"{volume}:/{volume}")]
            docker("run", "-d", "--name", container, *labels, "--network", network, *mounts, BASE, "sleep", "600")
        # clean_disk.sh removes the images `docker compose config --images` names: they must be only ours.
        listed = subprocess.run(
            ["docker", "compose", "config", "--images"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        assert sorted(set(listed)) == sorted(images), f"clean_disk.sh would remove other images too: {listed}"
        yield p
    finally:
        for kind, remove in (("container", ["rm", "-f"]), ("volume", ["volume", "rm"]), ("network", ["network", "rm"])):
            for n in p.mine[kind] + p.others[kind]:
                docker(*remove, n, check=False)
        docker("rm", "-f", seed, check=False)
        for tag in [*images, p.keep_image]:
            docker("rmi", tag, check=False)


def assert_all_there(kinds: dict[str, list[str]]) -> None:
    for kind, names in kinds.items():
        for name in names:
            assert exists(kind, name), f"{kind} {name} was removed"


def labelled(kind: str, project: str) -> list[str]:
    cmd = {"container": ["ps", "-aq"], "volume": ["volume", "ls", "-q"], "network": ["network", "ls", "-q"]}[kind]
    return docker(*cmd, "--filter", f"label={LABEL}={project}").stdout.split()


@pytest.mark.compose
def test_yes_removes_the_project_and_nothing_else(project: Project) -> None:
    result = project.run("--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    listing = result.stdout.split("clean_disk: removed")[0]
    for name in [*project.mine["container"], *project.mine["volume"], *project.mine["network"], *project.images]:
        assert name in listing, f"{name} not listed:\n{result.stdout}"
    for names in project.others.values():
        for name in names:
            assert name not in result.stdout, f"{name} listed for removal:\n{result.stdout}"
    assert result.stdout.endswith(
        f"clean_disk: removed project '{project.name}' (containers, networks, volumes, images).\n"
    )
    for kind in ("container", "volume", "network"):
        assert labelled(kind, project.name) == [], f"{kind}s of {project.name} remain"
        for name in project.mine[kind]:
            assert not exists(kind, name), f"{kind} {name} remains"
    for tag in project.images:
        assert not exists("image", tag), f"image {tag} remains"
    assert_all_there(project.others)
    for container in project.others["container"]:
        assert docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip() == "true", container

    again = project.run("--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"clean_disk: nothing to remove for project '{project.name}'.\n"


@pytest.mark.compose
def test_without_yes_and_without_a_terminal_it_refuses(project: Project) -> None:
    result = project.run()  # stdin is /dev/null: no terminal to ask on
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == "clean_disk: not a terminal; re-run with --yes to confirm\n"
    assert result.stdout.startswith(f"clean_disk: project '{project.name}' has:\n")
    assert_all_there(project.mine)
    assert_all_there(project.others)
    for tag in project.images:
        assert exists("image", tag), f"image {tag} was removed"


def test_unknown_argument_gives_usage() -> None:
    result = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("clean_disk: unknown argument '--bogus'\nUsage: ./clean_disk.sh [--yes] [-h]\n")
    assert "usage" in (result.stdout + result.stderr).lower()
    help_ = subprocess.run([str(SCRIPT), "-h"], capture_output=True, text=True)
    assert help_.returncode == 0 and help_.stdout.startswith("Usage: ./clean_disk.sh [--yes] [-h]\n")
