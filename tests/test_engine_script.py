"""tests/engine.sh up on a machine whose Docker engine already runs and is not the script's, with an empty cache.

On that path neither dockerd nor Compose is installed (so the step that used to create $CACHE_DIR never runs),
yet a stand-in may still have to be built and its download cached. To build one without retagging the images
others use on this shared engine, the script runs from a scratch copy of the repository (the script finds its
repository from its own location and reads the base images from its compose files): a byte-identical
tests/engine.sh and tests/standins/, and a docker-compose.yml naming the base python image (present) and a
seaweedfs tag of the pinned version with a throwaway suffix that no registry has. The script builds that tag
as it would build chrislusf/seaweedfs:X.YY, caching the weed binary in ENGINE_CACHE_DIR; the test removes only
its own tag afterwards. A grafana/grafana tag with such a suffix stands for Grafana, which has no stand-in: the
script must carry on without it and name it as missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, require_docker_engine

pytestmark = pytest.mark.compose

BASE = "python:3.11-slim-bookworm"
# The images others use on this engine (the stand-ins tests/engine.sh provides): never removed or retagged here.
SHARED = re.compile(r"^(python|postgres|redis|chrislusf/seaweedfs|prom/prometheus|prom/pushgateway):")
SEAWEEDFS_VERSION = re.search(
    r"^\s*image:\s*chrislusf/seaweedfs:([0-9.]+)\s*$", (ROOT / "docker-compose.scale.yml").read_text(), re.M
)[1]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, timeout=120)


def shared_images() -> dict[str, str]:
    """tag -> image ID of the shared images."""
    out = docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    return dict(line.split() for line in out.splitlines() if SHARED.match(line))


@pytest.fixture
def throwaway_tag() -> Iterator[str]:
    require_docker_engine()
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        pytest.fail(f"{BASE} is not on the engine (tests/engine.sh up provides it)")
    tag = f"chrislusf/seaweedfs:{SEAWEEDFS_VERSION}-enginetest{uuid.uuid4().hex[:8]}"
    before = shared_images()
    yield tag
    # Only this tag: when the build reused the cached layers it is one more name of the shared image's ID, and
    # `docker rmi TAG` (no -f) then only untags it.
    docker("rmi", tag, check=False)
    after = shared_images()
    assert {t: after.get(t) for t in before} == before, "a shared image was removed or retagged"
    assert tag not in after


def test_up_on_an_engine_not_ours_with_an_empty_cache_builds_and_caches(throwaway_tag: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "engine.sh", repo / "tests" / "engine.sh")
    shutil.copytree(ROOT / "tests" / "standins", repo / "tests" / "standins")
    grafana = f"grafana/grafana:12.2.0-enginetest{uuid.uuid4().hex[:8]}"
    (repo / "docker-compose.yml").write_text(
        f"services:\n  base:\n    image: {BASE}\n  store:\n    image: {throwaway_tag}\n  dash:\n    image: {grafana}\n"
    )
    cache = tmp_path / "cache" / "mlops-engine"  # absent, parent included, like a fresh /var/cache/mlops-engine
    state = tmp_path / "state"  # no dockerd.pid: the engine that answers is not this script's
    env = {**os.environ, "ENGINE_CACHE_DIR": str(cache), "ENGINE_STATE_DIR": str(state)}

    up = subprocess.run(
        ["bash", str(repo / "tests" / "engine.sh"), "up"], env=env, capture_output=True, text=True, timeout=300
    )

    assert up.returncode == 0, f"engine.sh up failed:\n{up.stderr}{up.stdout}"
    assert "using the Docker engine that already answers (not ours" in up.stderr
    assert f"base images present: {BASE};" in up.stdout
    assert f"substituted: {throwaway_tag}; missing: {grafana}" in up.stdout
    assert f"no registry and no stand-in for {grafana}: the monitoring suite runs without Grafana" in up.stderr
    assert not (state / "dockerd.pid").exists()  # not adopted as ours: `down` leaves it alone
    # What had to be cached is: the weed binary of the tag's version, whole (no .new left behind).
    weed = cache / f"weed-{SEAWEEDFS_VERSION}"
    assert sorted(p.name for p in cache.iterdir()) == [weed.name]
    assert os.access(weed, os.X_OK)
    assert f" {SEAWEEDFS_VERSION} " in subprocess.run([weed, "version"], capture_output=True, text=True).stdout
    # The stand-in exists, is labelled as one and runs that binary.
    labels = docker("image", "inspect", "-f", "{{json .Config.Labels}}", throwaway_tag).stdout
    assert '"org.mlops.standin":"true"' in labels
    version = docker("run", "--rm", "--entrypoint", "/usr/bin/weed", throwaway_tag, "version").stdout
    assert f" {SEAWEEDFS_VERSION} " in version
