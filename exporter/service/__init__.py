"""Running the exporter: one run from settings (job.py), the daemon (scheduler.py), logging,
metrics and the daemon's HTTP endpoint (logging.py, metrics.py, http.py)."""
