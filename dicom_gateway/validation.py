"""Checks on a received object before it is accepted: parse the header, never the pixels.

Everything here reads the data set that pynetdicom wrote to a temporary file (the File Meta
Information it built, then the bytes exactly as received) and either returns a ``ReceivedHeader``
or raises ``Refused`` with the C-STORE status and a comment for the sender.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from db.repository import StudyIdentity
from dicom_gateway.statuses import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
"""A UI value (PS3.5 6.2, 9.1): digits in dot-separated components."""

PIXEL_DATA_TAG = 0x7FE00010
PIXEL_ELEMENT_TAGS = frozenset({PIXEL_DATA_TAG, 0x7FE00008, 0x7FE00009})
"""Pixel Data, Float Pixel Data and Double Float Pixel Data (PS3.3 C.7.6.3)."""
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITATION_TAG = 0xFFFEE00D
SEQUENCE_DELIMITATION_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
"""Explicit VRs with a reserved field and a 32-bit length (PS3.5 7.1.2)."""
FILE_META_START = 132
"""128-byte preamble plus "DICM" (PS3.10 7.1)."""


class Refused(Exception):
    """The object is refused with ``status``; ``comment`` goes to the sender (at most 64 chars)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]


@dataclass(frozen=True)
class ReceivedHeader:
    """What the gateway needs to know of a received object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    manufacturer: str | None
    has_pixel_data: bool
    dataset_offset: int
    """Where the data set starts in the file, after the File Meta Information."""
    study: StudyIdentity = field(default_factory=StudyIdentity)


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a UI value safe to use as a path component (PS3.5 9.1)."""
    return 0 < len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None


def is_image_sop_class(sop_class_uid: str) -> bool:
    """Image Storage SOP Classes (PS3.4 B.5) must carry pixel data."""
    return "Image Storage" in UID(sop_class_uid).name


def _as_received(ds: Dataset, keyword: str, max_length: int) -> str | None:
    """A text value as sent (case kept), cut to its VR's maximum length (PS3.5 6.2) so that a
    non-conformant sender cannot make the database refuse the row."""
    value = str(ds.get(keyword, "") or "").strip()
    return value[:max_length] or None


def _code_string(ds: Dataset, keyword: str) -> str | None:
    """A CS value (at most 16 characters, PS3.5 6.2), upper-cased for the selection rules."""
    value = _as_received(ds, keyword, 16)
    return value.upper() if value else None


def study_identity(ds: Dataset) -> StudyIdentity:
    """The Patient and General Study attributes a reader finds the study by."""
    return StudyIdentity(
        patient_id=_as_received(ds, "PatientID", 64),
        patient_name=_as_received(ds, "PatientName", 194),
        accession_number=_as_received(ds, "AccessionNumber", 16),
        study_date=_as_received(ds, "StudyDate", 8),
        study_description=_as_received(ds, "StudyDescription", 64),
    )


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise Refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing")
    if not is_valid_uid(value):
        raise Refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is not a valid UID")
    return value


def _expected_native_pixel_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    return (int(ds.Rows) * int(ds.Columns) * samples * frames * bits + 7) // 8


class _Truncated(Exception):
    pass


class _ElementWalker:
    """Walks the encoded data elements of a file without decoding their values (PS3.5 7).

    pydicom stops silently at a truncated element; this walk checks that every element, item and
    encapsulated fragment fits in the file, and reports the length of each top-level element.
    """

    def __init__(self, fp: BinaryIO, end: int, little_endian: bool, implicit_vr: bool) -> None:
        self.fp = fp
        self.end = end
        self.order = "<" if little_endian else ">"
        self.implicit_vr = implicit_vr

    def _read(self, size: int) -> bytes:
        data = self.fp.read(size)
        if len(data) < size:
            raise _Truncated
        return data

    def _skip(self, length: int) -> None:
        target = self.fp.tell() + length
        if target > self.end:
            raise _Truncated
        self.fp.seek(target)

    def _tag(self) -> int:
        group, element = struct.unpack(self.order + "HH", self._read(4))
        return int((group << 16) | element)

    def _length32(self) -> int:
        return int(struct.unpack(self.order + "I", self._read(4))[0])

    def elements(self, implicit_vr: bool, in_item: bool = False) -> dict[int, int]:
        """Top-level tags and value lengths, up to the end or an Item Delimitation Item."""
        lengths: dict[int, int] = {}
        while self.fp.tell() < self.end:
            tag = self._tag()
            if tag == ITEM_DELIMITATION_TAG and in_item:
                self._read(4)
                return lengths
            vr = None
            if implicit_vr or tag >> 16 == 0xFFFE:
                length = self._length32()
            else:
                vr = self._read(2)
                if vr in LONG_LENGTH_VRS:
                    self._read(2)
                    length = self._length32()
                else:
                    length = int(struct.unpack(self.order + "H", self._read(2))[0])
            if length == UNDEFINED_LENGTH:
                self.items(implicit_vr=implicit_vr or vr == b"UN")
            else:
                self._skip(length)
            lengths[tag] = length
        if in_item:
            raise _Truncated
        return lengths

    def items(self, implicit_vr: bool) -> None:
        """Items of an undefined-length sequence or of encapsulated pixel data (PS3.5 7.5, A.4)."""
        while True:
            tag = self._tag()
            length = self._length32()
            if tag == SEQUENCE_DELIMITATION_TAG:
                return
            if tag != ITEM_TAG:
                raise Refused(CANNOT_UNDERSTAND, f"expected an item, found tag {tag:08X}")
            if length == UNDEFINED_LENGTH:
                self.elements(implicit_vr, in_item=True)
            else:
                self._skip(length)


def dataset_offset(fp: BinaryIO) -> int:
    """Offset of the data set: after the File Meta Information (PS3.10 7.1)."""
    fp.seek(FILE_META_START)
    header = fp.read(12)
    if len(header) < 12 or header[:4] != b"\x02\x00\x00\x00":
        raise Refused(CANNOT_UNDERSTAND, "no File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", header[8:12])
    return FILE_META_START + 12 + int(group_length)


def _top_level_lengths(
    fp: BinaryIO, start: int, file_size: int, transfer_syntax: UID
) -> dict[int, int]:
    fp.seek(start)
    walker = _ElementWalker(
        fp, file_size, transfer_syntax.is_little_endian, transfer_syntax.is_implicit_VR
    )
    try:
        return walker.elements(transfer_syntax.is_implicit_VR)
    except _Truncated as exc:
        raise Refused(CANNOT_UNDERSTAND, "data set truncated") from exc


def inspect_received(path: Path, sop_class_uid: str, sop_instance_uid: str) -> ReceivedHeader:
    """Parse and check a received object without decoding its pixels.

    ``sop_class_uid`` and ``sop_instance_uid`` are the Affected SOP Class and Instance UIDs of
    the C-STORE request; the data set must carry the same (PS3.4 B.2.1.1). Every element must fit
    in the file, and an image SOP class must carry pixel data of the size its Rows, Columns and
    Bits Allocated say.
    """
    file_size = path.stat().st_size
    with path.open("rb") as fp:
        try:
            ds = dcmread(fp, stop_before_pixels=True)
            transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        except (
            InvalidDicomError,
            EOFError,
            ValueError,
            KeyError,
            struct.error,
            OSError,
            AttributeError,
        ) as exc:
            raise Refused(CANNOT_UNDERSTAND, f"cannot parse data set: {exc}") from exc
        start = dataset_offset(fp)
        if transfer_syntax.is_deflated:
            # The walk needs the inflated stream; pydicom inflates the whole object instead.
            fp.seek(0)
            lengths = {int(elem.tag): 0 for elem in dcmread(fp, defer_size=1024)}
        else:
            lengths = _top_level_lengths(fp, start, file_size, transfer_syntax)
    if not [tag for tag in lengths if tag >> 16 != 0x0002]:
        raise Refused(CANNOT_UNDERSTAND, "empty data set")

    pixel_lengths = [lengths[tag] for tag in PIXEL_ELEMENT_TAGS if tag in lengths]
    native_pixel_length = lengths.get(PIXEL_DATA_TAG, UNDEFINED_LENGTH)
    try:
        if (
            native_pixel_length != UNDEFINED_LENGTH
            and not transfer_syntax.is_deflated
            and "Rows" in ds
            and "BitsAllocated" in ds
            and native_pixel_length < _expected_native_pixel_bytes(ds)
        ):
            raise Refused(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data shorter than its image attributes"
            )
        return _header_from(
            ds,
            str(transfer_syntax),
            sop_class_uid,
            sop_instance_uid,
            has_pixel_data=bool(pixel_lengths),
            dataset_offset=start,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot read header: {exc}") from exc


def _header_from(
    ds: Dataset,
    transfer_syntax: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    has_pixel_data: bool,
    dataset_offset: int,
) -> ReceivedHeader:
    dataset_sop_class = _required_uid(ds, "SOPClassUID")
    if dataset_sop_class != sop_class_uid:
        raise Refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the request")
    dataset_sop_instance = _required_uid(ds, "SOPInstanceUID")
    if dataset_sop_instance != sop_instance_uid:
        raise Refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the request")
    if is_image_sop_class(sop_class_uid) and not has_pixel_data:
        raise Refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data missing")
    return ReceivedHeader(
        sop_class_uid=dataset_sop_class,
        sop_instance_uid=dataset_sop_instance,
        study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_code_string(ds, "Modality"),
        body_part_examined=_code_string(ds, "BodyPartExamined"),
        view_position=_code_string(ds, "ViewPosition"),
        manufacturer=_as_received(ds, "Manufacturer", 64),
        has_pixel_data=has_pixel_data,
        dataset_offset=dataset_offset,
        study=study_identity(ds),
    )
