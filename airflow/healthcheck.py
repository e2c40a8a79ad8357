"""Healthcheck of an Airflow component by Airflow's own verdict: the api-server's /api/v2/monitor/health says
whether each component's heartbeat is recent. One small HTTP call instead of `airflow jobs check`, which imports
all of Airflow for every check, or a health server process beside the scheduler.

Usage: python healthcheck.py COMPONENT EXECUTION_API_URL     (scheduler, dag_processor, metadatabase; the
       compose healthcheck passes $AIRFLOW__CORE__EXECUTION_API_SERVER_URL, the api-server every component talks to)
"""

from __future__ import annotations

import json
import sys
import urllib.request

if __name__ == "__main__":
    component, url = sys.argv[1:] if len(sys.argv) == 3 else sys.exit(__doc__.split("\n\n")[-1].strip())
    api = url.removesuffix("/").removesuffix("/execution")  # its Task Execution API lives under /execution/
    with urllib.request.urlopen(f"{api}/api/v2/monitor/health", timeout=5) as response:
        health = json.load(response)
    status = (health.get(component) or {}).get("status")
    if status != "healthy":
        sys.exit(f"{component}: {status!r} ({health.get(component)})")
