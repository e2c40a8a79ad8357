"""What a person runs on the host (the make targets): run each as `python -m scripts.NAME` from the repository root."""
