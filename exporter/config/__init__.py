"""Settings: the schema (settings.py) and their sources (loader.py: file, EXPORTER_*, flags)."""
