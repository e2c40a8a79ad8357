"""clean_disk.sh is scoped to this compose project (static checks; the compose suite runs it for real)."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT

SCRIPT = (ROOT / "clean_disk.sh").read_text()
CODE = "\n".join(line for line in SCRIPT.splitlines() if not line.lstrip().startswith("#"))


def test_never_prunes_host_wide() -> None:
    assert "system prune" not in CODE
    assert not re.search(r"volume prune|network prune|container prune|builder prune", CODE)
    # The one prune is limited to this project's own labelled build stages.
    for line in CODE.splitlines():
        if "prune" in line:
            assert "--filter" in line and "org.mlops-pipeline.stage=builder" in line, line


def test_removes_through_the_compose_project() -> None:
    assert "docker compose down --volumes --rmi all --remove-orphans" in CODE
    assert "com.docker.compose.project=$project" in CODE


def test_asks_unless_yes_and_refuses_without_a_terminal() -> None:
    result = subprocess.run([str(ROOT / "clean_disk.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in (result.stdout + result.stderr).lower()
    assert 'if [ "$assume_yes" -ne 1 ]' in CODE and "read -r -p" in CODE
