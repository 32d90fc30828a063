"""The Tapkey API: tokens (auth.py), one GET (transport.py, statuses.py, retry.py, options.py),
lists (client.py, paging.py, page_facts.py, settle.py), payloads (records.py, access.py, fields.py,
page_text.py)."""
