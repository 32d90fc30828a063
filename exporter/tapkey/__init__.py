"""The Tapkey API: tokens (auth.py), one GET (transport.py, statuses.py), lists (client.py,
paging.py, settle.py), payloads (records.py, access.py, fields.py, page_text.py)."""
