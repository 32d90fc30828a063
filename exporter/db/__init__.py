"""The database: tables (schema.py), comments, engines, bulk inserts, migrations, writer lock."""
