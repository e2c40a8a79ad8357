"""Which model the server serves, and the switch to a new one: with no fixed model it follows
``models:/<name>@champion`` and, when the alias moves, loads the new version completely, then swaps it in (one
reference assignment). Requests in flight finish on the old model, so none fails during the switch; if the new
version cannot be loaded, the old one keeps serving. A background thread does the loading, so the event loop never
waits for it. The ``challenger`` alias is followed the same way, on its own (unless CHALLENGER_MODE is off): a
challenger that cannot be loaded leaves the champion, and the challenger before it, as they were.
"""

from __future__ import annotations

import logging
import threading
import time

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_pipeline.schema import CHALLENGER, CHAMPION
from mlops_pipeline.serving import metrics
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.serving.model import Loaded, load
from mlops_pipeline.settings import ServerSettings

log = logging.getLogger("model-server")


class ModelWatcher:
    """Holds the model being served and replaces it when the champion moves (a background thread, so the event
    loop never waits for a load)."""

    def __init__(self, settings: ServerSettings, recorder: InferenceLog | None = None) -> None:
        self.fixed_uri = settings.fixed_uri
        self.model_name = settings.registered_model_name
        self.poll_seconds = settings.model_poll_seconds
        self.compiled = settings.model_server_compiled
        self.counted = settings.model_server_metrics  # count loads and the served model, and pass it on to Loaded
        self.recorder = recorder  # passed on to Loaded
        self.current: Loaded | None = None
        self.challenger: Loaded | None = None  # loaded beside the champion; None when there is none, or mode off
        self.follows_challenger = settings.challenger_mode != "off" and not self.fixed_uri
        self.stopped = threading.Event()
        self.loading = threading.Event()  # set while a load is under way
        self.first_loaded = threading.Event()  # set once any model serves
        self.last_hint = 0.0

    def start(self) -> threading.Event:
        """Start watching; the event is set once the first load attempt is over (loaded, or nothing to load)."""
        first_attempt = threading.Event()
        threading.Thread(target=self.watch, args=(first_attempt,), name="model-watcher", daemon=True).start()
        return first_attempt

    def watch(self, first_attempt: threading.Event) -> None:
        while not self.stopped.is_set():
            try:
                self.refresh()
            except Exception:  # keep serving whatever is loaded; say why the new one is not
                if self.counted:
                    metrics.loaded(ok=False)
                log.exception("model-server: could not load the new model; still serving %s", self.describe())
            if self.follows_challenger and self.current:
                try:
                    self.refresh_challenger()
                except Exception:  # the champion serves every request meanwhile
                    log.exception("model-server: could not load the challenger; the champion answers alone")
            first_attempt.set()
            if self.fixed_uri and self.current:
                return  # a fixed model never changes
            # Until a model serves, look every second: every worker polls on its own, and one that found the new
            # champion seconds after another would answer 503 meanwhile.
            self.stopped.wait(self.poll_seconds if self.current else min(1.0, self.poll_seconds))

    def refresh(self) -> None:
        """Load the fixed model, or the champion if it moved; the name goes to the inference log ("" when pinned)."""
        if self.fixed_uri:
            uri, version, run_id, name = self.fixed_uri, "", "", ""
        else:
            try:
                target = MlflowClient().get_model_version_by_alias(self.model_name, CHAMPION)
            except MlflowException:
                self.hint(f"no model '{self.model_name}@{CHAMPION}' in the registry yet")
                return
            if self.current and self.current.version == target.version:
                return
            log.info("model-server: loading %s version %s (run %s)", self.model_name, target.version, target.run_id)
            uri, version, run_id = f"models:/{self.model_name}/{target.version}", target.version, target.run_id or ""
            name = self.model_name
        self.loading.set()
        try:
            self.swap(load(uri, version, run_id, self.compiled, self.counted, self.recorder, name))
        finally:
            self.loading.clear()

    def refresh_challenger(self) -> None:
        """Load the challenger if its alias moved; drop it when the alias is gone or names the champion."""
        try:
            target = MlflowClient().get_model_version_by_alias(self.model_name, CHALLENGER)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise  # the registry is away: keep the challenger as it is
            target = None
        if target is None or (self.current is not None and target.version == self.current.version):
            if self.challenger is not None:
                log.info("model-server: no challenger any more (was version %s)", self.challenger.version)
                self.challenger = None
            return
        if self.challenger is not None and self.challenger.version == target.version:
            return
        uri = f"models:/{self.model_name}/{target.version}"
        log.info("model-server: loading the challenger, %s version %s", self.model_name, target.version)
        recorder, name = self.recorder, self.model_name
        self.challenger = load(uri, target.version, target.run_id or "", self.compiled, self.counted, recorder, name)
        log.info("model-server: challenger version %s loaded beside champion %s", target.version, self.describe())

    def swap(self, new: Loaded) -> None:
        old, self.current = self.current, new  # one reference assignment: a request sees old or new, never neither
        self.first_loaded.set()
        if self.counted:
            name = "" if self.fixed_uri else self.model_name
            metrics.loaded(ok=True)
            metrics.serving(new.metric_labels(name), old.metric_labels(name) if old else None)
        log.info("model-server: now serving %s (was %s)", self.describe(), old.uri if old else "nothing")

    def describe(self) -> str:
        c = self.current
        return f"{c.uri} (version {c.version or '-'}, run {c.run_id or '-'})" if c else "nothing"

    def hint(self, why: str) -> None:
        if time.monotonic() - self.last_hint > 60:
            self.last_hint = time.monotonic()
            log.warning(
                "model-server: %s. Trigger the DAG 'mlops_pipeline' in Airflow; once it promotes a model this "
                "server loads it by itself. (Or run ./update_run_id.sh and recreate this service to serve one run.)",
                why,
            )
