"""Watching what is served: the inference log read back, drift against the training rows, pipeline metrics."""
