"""The read side: inventories, changes and histories from the database, and their output formats."""
