"""Alembic environment and revisions for the gloss store (shipped with the package)."""
