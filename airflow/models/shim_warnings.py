"""The one filter for the warnings skops provokes from Airflow's deprecated shims.

skops, on import and when it checks a model's types, searches every loaded module for each scipy ufunc; with
Airflow loaded that touches Airflow's deprecated shims, each of which warns (both message forms below). The
filter keeps task logs readable and skips logging each warning; the search itself remains. The scheduler and
the worker apply it before their preload, train_model on import, the tests through conftest.
"""

from __future__ import annotations

import warnings

AIRFLOW_SHIM_WARNING = r"The `airflow\.[^`]*` (attribute )?is deprecated"


def ignore_airflow_shim_warnings() -> None:
    warnings.filterwarnings("ignore", message=AIRFLOW_SHIM_WARNING)
