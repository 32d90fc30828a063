"""The Tapkey API: OAuth tokens (auth.py), HTTP client (client.py), payloads (records.py)."""
