"""The whole pipeline in one process, as the training DAG runs it task by task: check the data, train, evaluate
and, with --register, register and apply the gate. For a run by hand or a benchmark:

    python -m mlops_pipeline.pipeline [--register]      (settings from the environment, .env.example)
"""

from __future__ import annotations

import argparse
import logging
import sys

from mlops_pipeline import data, evaluate, registry, train
from mlops_pipeline.schema import ConfigError, DataError
from mlops_pipeline.settings import TrainSettings, from_env

log = logging.getLogger(__name__)


def run(settings: TrainSettings | None = None) -> str:
    """check -> train -> evaluate; returns the run ID."""
    settings = settings or from_env(TrainSettings)
    train.connect(settings)
    data.check(*data.load(settings.data_path))
    run_id = train.train_and_log(settings)
    log.info("run %s: %s", run_id, evaluate.evaluate_run(run_id))
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Settings come from the environment (.env.example describes each key: MLFLOW_TRACKING_URI, "
        "RF_N_ESTIMATORS, ...); the training data is $TRAINING_DATA_PATH or $AIRFLOW_HOME/data/iris.csv.",
    )
    parser.add_argument("--register", action="store_true", help="also register the model and apply the gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = from_env(TrainSettings)
        run_id = run(settings)
        if args.register:
            print(registry.register_and_promote(run_id, settings)["reason"], file=sys.stderr)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
