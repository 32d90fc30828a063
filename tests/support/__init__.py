"""What the tests share, in one place (fixtures live in the conftest.py files):

helpers.py       database servers, settings, in-process runs, sandbox ids, subprocess env
history.py       checks that a stored history is exact; reading runs and stored locks
cli.py           the `exporter` command as a subprocess or in-process; one-line messages
http_servers.py  TLS material and a forward proxy for the transport tests
inventory_data.py  a database filled by a scripted series of runs, for the read side
sandbox_http.py  tokens and API calls made by hand, for the sandbox's own tests
tapkey_client.py  lists served by hand and exact-list checks, for the Tapkey client's tests
config_files.py  config files written, loaded and their one-line errors, for the config tests
log_entries.py   runs reading log entries from a sandbox and the entries it lists, for the log tests
bi_views.py      selects over the BI views with result types, for the read-side tests
daemon.py        `exporter serve` as a subprocess, its JSON log, waits and checks on it
sync_checks.py   the versions a run wrote; that a run stored what the sandbox served
sandbox_access.py  the access routes, their payloads and paths, for the sandbox's own tests
cli_runs.py      the real `exporter` started in the background; waits on the runs it records
doc_sql.py       the SQL of docs/schema.md, read from the page so tests run the documented text
"""
