"""Settings for every cxr-triage entry point.

One class, read once per entry point (``Settings()``) and passed down. Every field can be set from
the environment with the ``CXR_`` prefix, for example ``CXR_DICOM_PORT=104``. With nothing set the
node runs on the embedded default: SQLite and the broker database under ``CXR_HOME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydicom.uid import PYDICOM_ROOT_UID

BUNDLED_MODEL = (
    Path(__file__).resolve().parent.parent / "training" / "model" / "cxr_pneumonia.keras"
)


class Settings(BaseSettings):
    """Node settings; see the configuration table in the README."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    home: Path = Field(Path("./cxr-home"), description="Working directory: spool, SQLite, logs.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home.")
    broker_url: str | None = Field(
        None, description="Celery broker URL; default Kombu's SQLAlchemy transport on SQLite."
    )
    config: Path | None = Field(
        None, description="YAML file with selection rules, destinations and routing rules."
    )
    model_path: Path = Field(BUNDLED_MODEL, description="Keras model; its model_card.json beside.")
    dataset_dir: Path | None = Field(None, description="Kaggle-layout dataset for train/evaluate.")

    ae_title: str = Field("CXR_TRIAGE", max_length=16, description="Our AE title.")
    uid_root: str = Field(
        PYDICOM_ROOT_UID,
        max_length=40,
        pattern=r"^[1-9][0-9]*(\.(0|[1-9][0-9]*))*\.$",
        description=(
            "Root of the UIDs we create (report series and instances, tracking UIDs, the model's "
            "device UID), ending in a dot: the organisation's registered root (PS3.5 9)."
        ),
    )
    dicom_host: str = Field("0.0.0.0", description="Address the Storage SCP listens on.")
    dicom_port: int = Field(11112, description="Port the Storage SCP listens on.")
    http_host: str = Field("127.0.0.1", description="Address the web API and pages listen on.")
    http_port: int = Field(8080, description="Port of the web API and pages.")
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated calling AE titles allowed to associate; empty allows all.",
    )
    max_associations: int = Field(32, ge=1, description="Concurrent associations per process.")
    acse_timeout: float = Field(30.0, gt=0, description="Seconds to wait for association messages.")
    dimse_timeout: float = Field(60.0, gt=0, description="Seconds to wait for DIMSE messages.")
    network_timeout: float = Field(60.0, gt=0, description="Seconds an idle association lives.")
    max_pdu_size: int = Field(
        131072, ge=0, description="Maximum PDU we receive, in bytes; 0 means unlimited."
    )
    gateway_processes: int = Field(
        1, ge=1, description="Receiving processes sharing the DICOM port (SO_REUSEPORT)."
    )
    disk_reserve_mb: int = Field(
        1024, ge=0, description="Free space below which C-STORE answers 0xA700 Out of Resources."
    )
    sweep_interval: float = Field(
        5.0, gt=0, description="Seconds between sweeps that queue instances the broker missed."
    )
    stale_job_after: float = Field(
        900.0, gt=0, description="Seconds after which a queued job never started is queued again."
    )
    task_time_limit: float = Field(300.0, gt=0, description="Hard time limit of a worker task.")
    inference_batch_size: int = Field(16, ge=1, description="Most images in one inference batch.")
    inference_batch_wait: float = Field(
        0.02, ge=0, description="Seconds the gateway waits for more images to batch with one."
    )
    study_quiet_seconds: float = Field(
        60.0, gt=0, description="A study not released cleanly is complete after this long quiet."
    )
    worker_concurrency: int = Field(2, ge=1, description="Worker processes for `cxr-triage run`.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_titles(cls, value: object) -> object:
        if isinstance(value, str):
            return [title.strip() for title in value.split(",") if title.strip()]
        return value

    @model_validator(mode="after")
    def _stale_beyond_time_limit(self) -> Settings:
        if self.stale_job_after <= self.task_time_limit:
            raise ValueError("stale_job_after must exceed task_time_limit")
        return self

    @property
    def spool_dir(self) -> Path:
        """Received objects, ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``."""
        return self.home / "spool"

    @property
    def incoming_dir(self) -> Path:
        """Partly received objects; on the spool's file system so a rename is atomic."""
        return self.home / "spool" / ".incoming"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'cxr-triage.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def visibility_timeout(self) -> float:
        """Broker redelivery delay for unacknowledged tasks: above the longest task."""
        return self.task_time_limit * 2 + 60
