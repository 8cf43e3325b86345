"""Alembic revisions of the parking ledger, oldest first (``v0001_initial`` ...)."""
