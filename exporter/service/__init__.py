"""Running the exporter: one run from settings (job.py), daemon (scheduler.py), logs, metrics."""
