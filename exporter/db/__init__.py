"""The database: tables (schema.py), comments, engines, migrations, writer lock (store.py)."""
