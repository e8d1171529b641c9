"""Per-process resources of a worker: created lazily in each Celery child, never in the parent.

The database engine and, on first use, the TensorFlow model belong to the process that made them;
a child forked from a parent holding either would share sockets or hang (TensorFlow).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import NodeConfig, load_config
from core.settings import Settings
from db.session import make_engine, make_session_factory
from worker.model import PneumoniaModel


@dataclass
class WorkerRuntime:
    pid: int
    settings: Settings
    config: NodeConfig
    engine: Engine
    sessions: sessionmaker[Session]
    name: str
    _model: PneumoniaModel | None = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> WorkerRuntime:
        engine = make_engine(settings.resolved_database_url)
        return cls(
            pid=os.getpid(),
            settings=settings,
            config=load_config(settings.config),
            engine=engine,
            sessions=make_session_factory(engine),
            name=f"{socket.gethostname()}:{os.getpid()}",
        )

    @property
    def model(self) -> PneumoniaModel:
        """The model, loaded on first use in this process."""
        if self._model is None:
            self._model = PneumoniaModel(self.settings.model_path)
        return self._model

    @property
    def quiet(self) -> timedelta:
        return timedelta(seconds=self.settings.study_quiet_seconds)


_runtime: WorkerRuntime | None = None


def runtime(settings: Settings) -> WorkerRuntime:
    """This process's runtime (made again after a fork)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = WorkerRuntime.create(settings)
    return _runtime
