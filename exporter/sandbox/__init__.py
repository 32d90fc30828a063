"""A fake Tapkey API for tests, demos and benchmarks; it imports nothing else from exporter."""
