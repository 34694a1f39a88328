"""Storage: SQLAlchemy Core tables, the async engine and the migration runner."""
