"""Which received instances go to inference: a pure function of the header and the rules."""

from __future__ import annotations

from core.config import PRODUCER_MANUFACTURER, SelectionRules
from dicom_gateway.validation import ReceivedHeader

SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PRODUCED_BY_US = "produced by cxr-triage"


def skip_reason(header: ReceivedHeader, rules: SelectionRules) -> str | None:
    """Why ``header``'s instance is not queued for inference, or None when it is."""
    if header.manufacturer == PRODUCER_MANUFACTURER:
        return PRODUCED_BY_US
    if not header.has_pixel_data:
        return "no pixel data"
    body_part = header.body_part_examined
    is_chest_capture = (
        header.sop_class_uid == SECONDARY_CAPTURE_IMAGE_STORAGE
        and body_part in rules.secondary_capture_body_parts
    )
    if header.modality not in rules.modalities and not is_chest_capture:
        return f"modality {header.modality or 'absent'} not selected"
    if body_part is None:
        if not rules.allow_missing_body_part:
            return "body part absent"
    elif body_part not in rules.body_parts:
        return f"body part {body_part} not selected"
    view = header.view_position
    if view is None:
        if not rules.allow_missing_view_position:
            return "view position absent"
    elif view not in rules.view_positions:
        return f"view position {view} not selected"
    return None
