"""Tapkey lock-inventory exporter: owner accounts and bound locks into SQL, with exact history.

Packages, each importing only those below it (import-linter checks it): cli, demo -> service,
read -> sync -> tapkey, db -> config -> errors, kinds, results, terminal; the sandbox imports
none of them.
"""
