"""The web API and pages: worklist, ops dashboard, health and metrics."""
