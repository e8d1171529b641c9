"""Accepting one received object: check it, store it durably, record it, hand its job on.

This is everything the C-STORE handler does, without pynetdicom, so that it can be tested and
reasoned about on its own. The order is what makes a success response honest:

1. refuse when free disk is below the reserve (0xA700);
2. parse and check the header (0xA900 / 0xC000 on bad data, see ``validation``);
3. acknowledge an identical copy (compared byte for byte with the stored versions of its SOP
   Instance UID) without a new row; otherwise assign the next version (1 when new);
4. rename the file into the spool, then flush the file system and commit the instance, its study
   and its job (``group_commit``: shared with whatever other associations have waiting);
5. after the commit, hand the job id to the dispatcher when the selection rules want it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.config import SelectionRules
from db.exports import forwarded_by_us, made_by_us
from db.repository import NewInstance, stored_versions
from db.session import session_scope
from dicom_gateway import spool
from dicom_gateway.group_commit import GroupCommit
from dicom_gateway.selection import PRODUCED_BY_US, skip_reason
from dicom_gateway.statuses import OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS
from dicom_gateway.validation import ReceivedHeader, Refused, inspect_received

LOGGER = logging.getLogger(__name__)

FORWARDED_BY_US = "forwarded by cxr-triage"
"""Skip reason of an original we forwarded that came back changed (loop protection); one that
came back unchanged is acknowledged as an identical copy."""


@dataclass(frozen=True)
class StoreResult:
    """What to answer the sender, and what was recorded."""

    status: int
    comment: str | None = None
    instance_id: int | None = None
    job_id: int | None = None
    duplicate: bool = False

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS


class Ingest:
    """Stores received objects into the spool and the database for one gateway process."""

    def __init__(
        self,
        spool_dir: Path,
        disk_reserve_bytes: int,
        sessions: sessionmaker[Session],
        rules: SelectionRules,
        submit_job: Callable[[int], None],
    ) -> None:
        self.spool_dir = spool_dir
        self.disk_reserve_bytes = disk_reserve_bytes
        self._sessions = sessions
        self._rules = rules
        self._submit_job = submit_job
        self._uid_locks = spool.StripedLock(spool_dir / ".locks")
        self._group_commit = GroupCommit(spool_dir, sessions)

    def stop(self) -> None:
        self._group_commit.stop()

    def has_room(self) -> bool:
        return spool.has_room(self.spool_dir, self.disk_reserve_bytes)

    def store(
        self,
        received: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        association_id: int | None,
    ) -> StoreResult:
        """Accept or refuse the object in the temporary file ``received``.

        The temporary file is moved into the spool on success and left for the caller to delete
        otherwise. Never raises: every failure becomes a refusal status.
        """
        try:
            if not self.has_room():
                raise Refused(OUT_OF_RESOURCES, "free disk space below the configured reserve")
            header = inspect_received(received, sop_class_uid, sop_instance_uid)
            result = self._record(received, header, association_id)
        except Refused as refusal:
            LOGGER.info("refused %s: 0x%04X %s", sop_instance_uid, refusal.status, refusal.comment)
            return StoreResult(refusal.status, refusal.comment)
        except Exception:
            LOGGER.exception("failed to store %s", sop_instance_uid)
            return StoreResult(PROCESSING_FAILURE, "internal error while storing")
        if result.job_id is not None and not result.duplicate:
            self._submit_job(result.job_id)
        return result

    def _record(
        self, received: Path, header: ReceivedHeader, association_id: int | None
    ) -> StoreResult:
        """Assign a version, move the file into the spool, make it durable and commit its rows.

        The version is assigned under a lock on the SOP Instance UID shared by every gateway
        process, so two senders of the same UID cannot take the same version or path. A crash
        between the move and the commit leaves an unacknowledged file that a resend overwrites.
        """
        reason = skip_reason(header, self._rules)
        with self._uid_locks.hold(header.sop_instance_uid):
            with session_scope(self._sessions) as session:
                versions = stored_versions(session, header.sop_instance_uid)
                forwarded = bool(versions) and forwarded_by_us(session, header.sop_instance_uid)
                ours = reason is None and made_by_us(session, header.sop_instance_uid)
            if any(
                spool.same_data_set(received, header.dataset_offset, self.spool_dir / path)
                for _, path in versions
                if (self.spool_dir / path).is_file()  # a stored version removed from the spool
            ):
                LOGGER.info("identical copy of %s acknowledged", header.sop_instance_uid)
                return StoreResult(SUCCESS, duplicate=True)
            if forwarded:
                reason = FORWARDED_BY_US
            elif ours:
                reason = PRODUCED_BY_US
            version = max((v for v, _ in versions), default=0) + 1
            relative = spool.relative_path(
                header.study_instance_uid,
                header.series_instance_uid,
                header.sop_instance_uid,
                version,
            )
            size = received.stat().st_size
            spool.move_into_spool(received, self.spool_dir, relative)
            instance_id, job_id = self._group_commit.record(
                NewInstance(
                    study_instance_uid=header.study_instance_uid,
                    series_instance_uid=header.series_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=header.transfer_syntax_uid,
                    version=version,
                    path=relative.as_posix(),
                    size_bytes=size,
                    modality=header.modality,
                    body_part_examined=header.body_part_examined,
                    view_position=header.view_position,
                    association_id=association_id,
                    skip_reason=reason,
                    study=header.study,
                )
            )
        if version > 1:
            LOGGER.info("%s stored as version %d", header.sop_instance_uid, version)
        return StoreResult(SUCCESS, instance_id=instance_id, job_id=None if reason else job_id)
