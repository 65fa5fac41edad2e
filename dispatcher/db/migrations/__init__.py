"""Alembic migrations, shipped in the package so an installed wheel can migrate."""
