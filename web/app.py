"""The web API and pages, served by ``cxr-triage web``.

- ``/worklist`` (page) and ``/api/worklist``: every study, newest first, with its result and flag;
  ``POST /api/flags/{id}/acknowledge|dismiss`` records who did it and when.
- ``/dashboard`` (page) and ``/api/queue``: jobs, deliveries and associations by state, recent
  failures. Everything comes from the database, so the history survives restarts (Flower shows
  the live Celery workers).
- ``/healthz``: 200 while the database answers (with the broker's state), 503 otherwise.
- ``/metrics``: Prometheus text format, read from the database at each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from kombu.connection import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from db.models import FlagState
from db.results import flag_history, set_flag_state
from db.session import make_engine, make_session_factory, session_scope
from db.views import queue_summary, recent_associations, recent_failures, worklist

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def _session(request: Request) -> Iterator[Session]:
    """One unit of work per request."""
    with session_scope(request.app.state.sessions) as unit:
        yield unit


Database = Annotated[Session, Depends(_session)]


class FlagAction(BaseModel):
    by: str = Field(min_length=1, max_length=128, description="Who acknowledges or dismisses.")


class DatabaseCollector:
    """Prometheus gauges computed from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with session_scope(self._sessions) as session:
            summary = queue_summary(session)
        for name, label, doc in (
            ("jobs", "state", "Jobs by state."),
            ("deliveries", "outcome", "Delivery attempts by outcome."),
            ("associations", "outcome", "Associations by outcome."),
            ("flags", "state", "Worklist flags by state."),
        ):
            family = GaugeMetricFamily(f"cxr_{name}", doc, labels=[label])
            for value, count in sorted(summary[name].items()):
                family.add_metric([value], count)
            yield family
        yield GaugeMetricFamily("cxr_studies", "Studies received.", value=summary["studies"])
        yield GaugeMetricFamily("cxr_study_results", "Study results.", value=summary["results"])


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(sessions))
    app = FastAPI(title="cxr-triage", version="0.1.0")
    app.state.sessions = sessions

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/worklist")

    @app.get("/healthz")
    def healthz() -> Response:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"down: {type(exc).__name__}"
        try:
            with Connection(settings.resolved_broker_url, connect_timeout=2) as broker:
                broker.ensure_connection(max_retries=1)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"down: {type(exc).__name__}"
        healthy = checks["database"] == "ok"
        status = "ok" if healthy and checks["broker"] == "ok" else "degraded"
        return JSONResponse(
            {"status": status if healthy else "down", **checks},
            status_code=200 if healthy else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/worklist")
    def api_worklist(
        db: Database, limit: int = 100, offset: int = 0, by_priority: bool = False
    ) -> list[dict[str, Any]]:
        return [row.as_dict() for row in worklist(db, limit, offset, by_priority)]

    @app.post("/api/flags/{flag_id}/acknowledge")
    def acknowledge(flag_id: int, action: FlagAction, db: Database) -> dict[str, Any]:
        return _set_state(db, flag_id, FlagState.ACKNOWLEDGED, action.by)

    @app.post("/api/flags/{flag_id}/dismiss")
    def dismiss(flag_id: int, action: FlagAction, db: Database) -> dict[str, Any]:
        return _set_state(db, flag_id, FlagState.DISMISSED, action.by)

    @app.get("/api/flags/{flag_id}/history")
    def history(flag_id: int, db: Database) -> list[dict[str, Any]]:
        return [
            {
                "event": e.event,
                "actor": e.actor,
                "state": str(e.state),
                "positive": e.positive,
                "probability": e.probability,
                "result": e.study_result_id,
                "at": e.at.isoformat(),
            }
            for e in flag_history(db, flag_id)
        ]

    @app.get("/api/queue")
    def api_queue(db: Database) -> dict[str, Any]:
        return queue_summary(db)

    @app.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request, db: Database, by_priority: bool = False) -> HTMLResponse:
        rows = worklist(db, limit=200, by_priority=by_priority)
        return TEMPLATES.TemplateResponse(
            request, "worklist.html", {"rows": rows, "by_priority": by_priority}
        )

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard_page(request: Request, db: Database) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            "dashboard.html",
            {
                "summary": queue_summary(db),
                "associations": recent_associations(db),
                "failures": recent_failures(db),
            },
        )

    return app


def _set_state(db: Session, flag_id: int, state: FlagState, by: str) -> dict[str, Any]:
    try:
        flag = set_flag_state(db, flag_id, state, by)
    except LookupError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return {"id": flag.id, "state": str(flag.state), "by": flag.state_changed_by}
