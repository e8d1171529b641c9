"""Study results: when a study is complete, and how its images' findings make one result.

A study is complete when the last association that carried it was released cleanly after its
last image arrived (most senders send a study in one association), or when no image has arrived
for ``CXR_STUDY_QUIET_SECONDS`` (a study spread over several associations, or one whose
association was aborted). Its result is then due once every image selected for inference has
finished (done or failed). A later image makes the study incomplete again; when it completes
again, a new result version follows (a revised report, an updated flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Finding, StudyResult, utcnow
from db.results import (
    apply_result_to_flag,
    latest_result,
    lock_study,
    study_findings,
    unfinished_jobs,
)

STUDY_RULE = "max over frontal images"
"""The study's probability is the highest of its frontal images' (the selection rules admit only
PA, AP or unspecified views): a pneumonia seen on one view is not diluted by a clear other view."""

FLAG_PRIORITY = "urgent"


def completion(
    last_received_at: datetime,
    released_at: datetime | None,
    now: datetime,
    quiet: timedelta,
) -> str | None:
    """``released`` or ``quiet`` when the study is complete by that rule, else None."""
    if released_at is not None and released_at >= last_received_at:
        return "released"
    if now - last_received_at >= quiet:
        return "quiet"
    return None


def combine(probabilities: Sequence[float], threshold: float) -> tuple[float, bool]:
    """The study's probability and label from its images' probabilities (``STUDY_RULE``)."""
    if not probabilities:
        raise ValueError("a study result needs at least one finding")
    probability = max(probabilities)
    return probability, probability >= threshold


def finalize(session: Session, study_id: int, quiet: timedelta) -> StudyResult | None:
    """Make the study's next result if it is complete, finished, and not yet reported as is.

    Returns the new result (with its flag raised or revised), or None when nothing is due. Safe
    to call from every path at once (release, end of inference, quiet sweep): the study row is
    locked, and a result for the same set of images is never made twice.
    """
    study = lock_study(session, study_id)
    if study is None:
        return None
    complete_by = completion(study.last_received_at, study.released_at, utcnow(), quiet)
    if complete_by is None or unfinished_jobs(session, study_id):
        return None
    findings = study_findings(session, study_id)
    if not findings:
        return None  # nothing selected for inference finished well: nothing to report
    instance_ids = [finding.instance_id for finding in findings]
    previous = latest_result(session, study_id)
    if previous is not None and previous.instance_ids == instance_ids:
        return None
    result = _result(study_id, findings, previous, complete_by)
    try:
        with session.begin_nested():
            session.add(result)
            session.flush()
    except IntegrityError:
        return None  # another worker made this version first
    apply_result_to_flag(session, result, FLAG_PRIORITY)
    return result


def _result(
    study_id: int, findings: Sequence[Finding], previous: StudyResult | None, complete_by: str
) -> StudyResult:
    model = findings[-1]
    probability, positive = combine([f.probability for f in findings], model.threshold)
    return StudyResult(
        study_id=study_id,
        version=1 if previous is None else previous.version + 1,
        probability=probability,
        positive=positive,
        threshold=model.threshold,
        rule=STUDY_RULE,
        instance_ids=[f.instance_id for f in findings],
        complete_by=complete_by,
        model_name=model.model_name,
        model_version=model.model_version,
        device_uid=model.device_uid,
    )
