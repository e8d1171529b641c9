"""Results back to PACS: the report objects of a study result, where they go, and each delivery.

A result's SR (and Secondary Capture, when a destination wants one) is built once: its SOP
Instance UID is fixed and its file written before the first delivery attempt, so a resend is the
same object. Each (destination, object) is then delivered by its own task, so a PACS outage
delays only what goes there, and never runs inference again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Destination
from core.gradcam import gradcam
from core.preprocess import display_from_dicom, to_model_input
from db.exports import (
    Attempt,
    add_report,
    attempts_so_far,
    previous_report,
    record_attempt,
    report_for,
    was_sent,
)
from db.models import (
    DeliveryOutcome,
    Finding,
    Instance,
    Report,
    ReportKind,
    Study,
    StudyResult,
    utcnow,
)
from db.session import session_scope
from dicom_gateway.store_scu import SendResult, send_files
from worker.report import ModelIdentity, StudyFinding, build_secondary_capture, build_sr
from worker.routing import Route, routes, routing_keywords
from worker.runtime import WorkerRuntime

LOGGER = logging.getLogger(__name__)

REPORTS_DIR = "reports"
SC_SERIES_OFFSET = 1
"""The SC series number follows the SR's."""
SR_SERIES_NUMBER = 9901
"""Series Number of our SR series: high, so viewers list it after the acquired series."""


@dataclass(frozen=True)
class Planned:
    """A delivery to make: the object (a report or an original image) and its destination."""

    kind: str
    object_id: int
    destination: str


def plan_result(rt: WorkerRuntime, result_id: int) -> list[Planned]:
    """Build the result's reports that any route needs; return every delivery to make."""
    with session_scope(rt.sessions) as session:
        result = session.get(StudyResult, result_id)
        if result is None:
            raise LookupError(f"no study result {result_id}")
        instances = list(
            session.scalars(
                select(Instance).where(Instance.id.in_(result.instance_ids)).order_by(Instance.id)
            )
        )
    first = dcmread(rt.settings.spool_dir / instances[0].path, stop_before_pixels=True)
    attributes = {keyword: _text(first, keyword) for keyword in routing_keywords(rt.config)}
    planned_routes = routes(rt.config, result.positive, result.probability, attributes)
    report_ids = {
        kind: _ensure_report(rt, result, instances, ReportKind(kind))
        for kind in sorted({route.kind for route in planned_routes} - {"original"})
    }
    return [
        planned for route in planned_routes for planned in _expand(route, report_ids, instances)
    ]


def _expand(route: Route, report_ids: dict[str, int], instances: list[Instance]) -> list[Planned]:
    if route.kind == "original":
        return [Planned("original", instance.id, route.destination) for instance in instances]
    return [Planned(route.kind, report_ids[route.kind], route.destination)]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


def _ensure_report(
    rt: WorkerRuntime, result: StudyResult, instances: list[Instance], kind: ReportKind
) -> int:
    """The id of the result's report of ``kind``, building and writing it if it does not exist."""
    with session_scope(rt.sessions) as session:
        existing = report_for(session, result.id, kind)
        if existing is not None:
            return existing.id
        previous = previous_report(session, result.study_id, result.version, kind)
        study_uid = session.scalar(
            select(Study.study_instance_uid).where(Study.id == result.study_id)
        )
    sources = [dcmread(rt.settings.spool_dir / i.path, stop_before_pixels=True) for i in instances]
    model = ModelIdentity(
        result.model_name, result.model_version, result.device_uid, result.threshold
    )
    finding = StudyFinding(result.probability, result.positive)
    root = rt.settings.uid_root
    series_uid = previous.series_instance_uid if previous is not None else generate_uid(root)
    sop_uid = generate_uid(root)
    if kind is ReportKind.SR:
        previous_ds = dcmread(rt.settings.home / previous.path) if previous is not None else None
        dataset: Dataset = build_sr(
            sources,
            finding,
            model,
            series_instance_uid=series_uid,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=result.version,
            previous=previous_ds,
            uid_root=root,
        )
    else:
        dataset = _secondary_capture(rt, result, instances, finding, model, series_uid, sop_uid)
    relative = Path(REPORTS_DIR) / str(study_uid) / series_uid / f"{sop_uid}.dcm"
    _write_durably(dataset, rt.settings.home / relative)
    try:
        with session_scope(rt.sessions) as session:
            report = add_report(
                session,
                Report(
                    study_result_id=result.id,
                    kind=kind,
                    sop_class_uid=str(dataset.SOPClassUID),
                    sop_instance_uid=sop_uid,
                    series_instance_uid=series_uid,
                    path=relative.as_posix(),
                ),
            )
            return report.id
    except IntegrityError:
        # Another worker built this report first; ours is never sent.
        (rt.settings.home / relative).unlink(missing_ok=True)
        with session_scope(rt.sessions) as session:
            winner = report_for(session, result.id, kind)
            assert winner is not None
            return winner.id


def _secondary_capture(
    rt: WorkerRuntime,
    result: StudyResult,
    instances: list[Instance],
    finding: StudyFinding,
    model: ModelIdentity,
    series_uid: str,
    sop_uid: str,
) -> Dataset:
    """The SC shows the image with the highest probability, with its Grad-CAM heat map."""
    with session_scope(rt.sessions) as session:
        best = session.scalar(
            select(Finding)
            .where(Finding.instance_id.in_(result.instance_ids))
            .order_by(Finding.probability.desc())
            .limit(1)
        )
        assert best is not None
        path = next(i.path for i in instances if i.id == best.instance_id)
    source = dcmread(rt.settings.spool_dir / path)
    display = display_from_dicom(source)
    model_input = to_model_input(display, rt.model.card.input_size)
    heatmap = gradcam(rt.model.keras_model, model_input)
    return build_secondary_capture(
        source,
        display,
        finding,
        model,
        heat_map=heatmap,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER + SC_SERIES_OFFSET,
        sop_instance_uid=sop_uid,
        instance_number=result.version,
    )


def _write_durably(dataset: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    dataset.save_as(temporary, enforce_file_format=True)
    with temporary.open("rb") as fp:
        os.fsync(fp.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True)
class DeliveryStep:
    """What one delivery attempt did, and whether to try again after ``retry_after`` seconds."""

    outcome: DeliveryOutcome
    attempt: int
    retry_after: float | None


def deliver(rt: WorkerRuntime, planned: Planned) -> DeliveryStep | None:
    """One C-STORE attempt of an object to a destination, recorded; None if it was sent before.

    A status the peer answers is recorded as it is: success or warning is ``sent``, 0xA7xx
    (out of resources) is retried, any other failure is ``failed`` at once. No connection, a
    transient association rejection or no answer are retried with exponential backoff up to
    the policy's attempts, then ``failed``.
    """
    destination = rt.config.destination(planned.destination)
    policy = rt.config.delivery
    with session_scope(rt.sessions) as session:
        path, sop_uid, report_id, instance_id = _object(rt, session, planned)
        if was_sent(session, sop_uid, destination.name):
            return None
        attempt = attempts_so_far(session, sop_uid, destination.name) + 1
    started = utcnow()
    sent = send_files(
        [path],
        destination.host,
        destination.port,
        destination.ae_title,
        calling_ae_title=rt.settings.ae_title,
        timeout=policy.timeout_seconds,
    )[0]
    outcome = _outcome(sent, attempt, policy.max_attempts)
    with session_scope(rt.sessions) as session:
        record_attempt(
            session,
            Attempt(
                destination=destination.name,
                called_ae_title=destination.ae_title,
                address=f"{destination.host}:{destination.port}",
                kind=planned.kind,
                sop_instance_uid=sop_uid,
                report_id=report_id,
                instance_id=instance_id,
                attempt=attempt,
                status=sent.status,
                outcome=outcome,
                error=sent.error,
            ),
            started,
        )
    _log(destination, planned, sop_uid, attempt, sent, outcome)
    retry_after = policy.delay_after(attempt) if outcome is DeliveryOutcome.RETRYING else None
    return DeliveryStep(outcome, attempt, retry_after)


def _outcome(sent: SendResult, attempt: int, max_attempts: int) -> DeliveryOutcome:
    if sent.ok:
        return DeliveryOutcome.SENT
    if sent.transient and attempt < max_attempts:
        return DeliveryOutcome.RETRYING
    return DeliveryOutcome.FAILED


def _object(
    rt: WorkerRuntime, session: Session, planned: Planned
) -> tuple[Path, str, int | None, int | None]:
    """Path, SOP Instance UID, report id and instance id of the object to send."""
    if planned.kind == "original":
        instance = session.get(Instance, planned.object_id)
        assert instance is not None
        return rt.settings.spool_dir / instance.path, instance.sop_instance_uid, None, instance.id
    report = session.get(Report, planned.object_id)
    assert report is not None
    return rt.settings.home / report.path, report.sop_instance_uid, report.id, None


def _log(
    destination: Destination,
    planned: Planned,
    sop_uid: str,
    attempt: int,
    sent: SendResult,
    outcome: DeliveryOutcome,
) -> None:
    status = "none" if sent.status is None else f"0x{sent.status:04X}"
    LOGGER.info(
        "%s %s to %s (%s) attempt %d: status %s, %s%s",
        planned.kind,
        sop_uid,
        destination.name,
        destination.ae_title,
        attempt,
        status,
        outcome,
        f" ({sent.error})" if sent.error else "",
    )
