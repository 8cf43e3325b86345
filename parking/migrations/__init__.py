"""Alembic migrations of the parking ledger (``citybrain.parking.ledger.upgrade`` runs them)."""
