"""SQLAlchemy models, engine factory and Alembic migrations (SQLite and PostgreSQL)."""
