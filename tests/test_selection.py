"""Selection rules: which instances go to inference, and the reason for every skip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import SelectionRules, load_config
from dicom_gateway.selection import SECONDARY_CAPTURE_IMAGE_STORAGE, skip_reason
from dicom_gateway.validation import ReceivedHeader

CHEST_DX = ReceivedHeader(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
    sop_instance_uid="1.2.3.4",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="DX",
    body_part_examined="CHEST",
    view_position="PA",
    manufacturer="ACME",
    has_pixel_data=True,
    dataset_offset=300,
)
DEFAULT = SelectionRules()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"modality": "CR", "view_position": "AP"}, None),
        ({"body_part_examined": "THORAX", "view_position": None}, None),
        ({"body_part_examined": None}, None),
        ({"modality": "CT"}, "modality CT not selected"),
        ({"modality": None}, "modality absent not selected"),
        ({"body_part_examined": "HAND"}, "body part HAND not selected"),
        ({"view_position": "LL"}, "view position LL not selected"),
        ({"manufacturer": "cxr-triage"}, "produced by cxr-triage"),
        ({"has_pixel_data": False}, "no pixel data"),
        (
            {"sop_class_uid": SECONDARY_CAPTURE_IMAGE_STORAGE, "modality": "OT"},
            None,
        ),
        (
            {
                "sop_class_uid": SECONDARY_CAPTURE_IMAGE_STORAGE,
                "modality": "OT",
                "body_part_examined": None,
            },
            "modality OT not selected",
        ),
    ],
)
def test_default_rules(changes: dict[str, object], reason: str | None) -> None:
    assert skip_reason(replace(CHEST_DX, **changes), DEFAULT) == reason  # type: ignore[arg-type]


def test_rules_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "cxr.yaml"
    config.write_text("selection:\n  modalities: [dx]\n  allow_missing_view_position: false\n")
    rules = load_config(config).selection
    assert rules.modalities == ["DX"]
    assert skip_reason(replace(CHEST_DX, modality="CR"), rules) == "modality CR not selected"
    assert skip_reason(replace(CHEST_DX, view_position=None), rules) == "view position absent"
    assert load_config(None).selection == DEFAULT


def test_unknown_config_keys_are_an_error(tmp_path: Path) -> None:
    config = tmp_path / "cxr.yaml"
    config.write_text("selection:\n  modality: [DX]\n")
    with pytest.raises(ValidationError, match="modality"):
        load_config(config)
