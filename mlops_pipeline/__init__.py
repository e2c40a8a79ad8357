"""The MLOps pipeline as one package, one module per stage, in the order the data flows:

schema, settings -> data -> train -> evaluate (the gate) -> registry -> serving (app, predictors, metrics, the
inference log) -> monitoring (the log reader, drift, pipeline metrics) -> data again (labeled rows, a retrain).

The Airflow DAGs (airflow/dags), the model-server (mlflow/model-server.sh) and the host scripts are thin entry
points over these modules; imports run one way, from them down to schema and settings.
"""

from __future__ import annotations

import warnings

# skops, on import and when it checks a model's types, searches every loaded module for each scipy ufunc; with
# Airflow loaded that touches Airflow's deprecated shims, each of which warns (both message forms). Filtered here,
# once, for every process that imports the package (the scheduler, a task, the tests through conftest).
AIRFLOW_SHIM_WARNING = r"The `airflow\.[^`]*` (attribute )?is deprecated"
warnings.filterwarnings("ignore", message=AIRFLOW_SHIM_WARNING)
