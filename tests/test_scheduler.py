"""airflow/scheduler.py: the training libraries are imported before Airflow's scheduler starts, and what the
process holds stays frozen for its garbage collector (its pages stay shared with the forked workers) even after the
LocalExecutor's fork unfreezes it."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

# Runs in a fresh interpreter: freezing the collector would change this test process for every later test.
PROBE = """
import gc, os, sys, time
import scheduler

scheduler.keep_imports_frozen(interval=0.05)
frozen = gc.get_freeze_count()
assert frozen > 10_000, f"only {frozen} objects frozen after the imports"
assert "sklearn.ensemble" in sys.modules and "mlflow.sklearn" in sys.modules, "the training libraries are not imported"

gc.freeze()  # what the LocalExecutor does around forking its workers
pid = os.fork()
if pid == 0:
    os._exit(0)
gc.unfreeze()
os.waitpid(pid, 0)
deadline = time.monotonic() + 10
while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
assert gc.get_freeze_count() >= frozen, f"not frozen again after the executor's unfreeze: {gc.get_freeze_count()}"

class Node:
    pass

node = Node()
node.self = node  # a cycle made after the freeze is still collected
del node
assert gc.collect() > 0
print("ok")
"""


def test_imports_stay_frozen_after_the_executor_unfreezes() -> None:
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = env.get("AIRFLOW_HOME") or str(ROOT / ".local" / "test-airflow-home")
    # Run in airflow/, where the image keeps scheduler.py beside the other entry points (`python -c` imports from
    # the current directory first).
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT / "airflow", capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
