"""The model-server: MLflow's scoring protocol in a Starlette app (app.py), its compiled predictions, metrics and
inference log."""
