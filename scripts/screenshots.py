"""`make screenshots`: README step 6 in a real browser against the running stack, its key screens into docs/images/.

Usage: python -m scripts.screenshots [--env-file .env] [--out docs/images]

The walkthrough is the browser suite's (ui_flow.py): log into Airflow, trigger `mlops_pipeline` with the Trigger
button (one more DAG run, as the README does), watch it turn green, then MLflow from its home page to the run and
the registered model. Each named screen is checked for what the README says it shows before it is kept. Redo the
pictures when the UIs change: `make demo` (or any running stack), then `make screenshots`.

Each picture is reduced to a 256-colour PNG (UI screens lose nothing visible, and the repository stays small) and
written atomically: a failed run leaves the previous pictures as they were.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from scripts.browser import UIFlowError, chromium_unavailable_reason
from scripts.stackclient import http, mlflow_login
from scripts.stackenv import SettingsError, settings, urls
from scripts.ui_flow import run_ui_flow

ROOT = Path(__file__).resolve().parent.parent
# The screens the README and docs/ui-walkthrough.md show, by the names ui_flow gives them.
SCREENS = (
    "airflow-dag",
    "airflow-run-success",
    "mlflow-model-training",
    "mlflow-run",
    "mlflow-artifact-confusion-matrix",
    "mlflow-model-registry",
)


def save_small(source: Path, target: Path) -> None:
    """A 256-colour copy of `source` at `target`, replacing it only once complete."""
    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".png")
    os.close(fd)
    try:
        small.save(tmp, optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a picture in the repository is for everyone
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(screens: dict[str, str], out: Path) -> list[Path]:
    """The SCREENS of one walkthrough (name -> screenshot) as out/NAME.png; nothing is written unless all exist."""
    missing = [name for name in SCREENS if not Path(screens.get(name, "")).is_file()]
    if missing:
        raise ValueError(f"the walkthrough has no screenshot of {missing}; {out} is unchanged")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCREENS:
        save_small(Path(screens[name]), out / f"{name}.png")
        written.append(out / f"{name}.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=Path(os.environ.get("ENV_FILE", ROOT / ".env")))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    try:
        cfg = settings(args.env_file)
    except SettingsError as exc:
        sys.exit(f"screenshots: {exc}")
    airflow_url, mlflow_url = urls(cfg)["airflow"], urls(cfg)["mlflow"]
    for name, url in (("Airflow", f"{airflow_url}/api/v2/monitor/health"), ("MLflow", f"{mlflow_url}/health")):
        try:
            http("GET", url, timeout=10)
        except OSError as exc:
            sys.exit(f"screenshots: {name} does not answer at {url} ({exc}): start the stack first (make demo)")
    if reason := chromium_unavailable_reason():
        sys.exit(f"screenshots: {reason}")

    with tempfile.TemporaryDirectory(prefix="screenshots-") as shots:
        try:
            result = run_ui_flow(
                airflow_url,
                mlflow_url,
                cfg.get("AIRFLOW_ADMIN_USERNAME") or "admin",
                cfg["AIRFLOW_ADMIN_PASSWORD"],
                shots,
                mlflow_headers=mlflow_login(cfg),
            )
        except UIFlowError as exc:
            sys.exit(f"screenshots: {exc}\n(docs/images/ is unchanged)")
        try:
            written = publish(result["screens"], args.out)
        except ValueError as exc:
            sys.exit(f"screenshots: {exc}")
    for path in written:
        print(f"screenshots: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
