"""The SQL database: models, sessions, repository functions and Alembic migrations."""
