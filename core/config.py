"""The node's YAML configuration file (``CXR_CONFIG``): selection rules, destinations, routing.

Settings that are a single value live in ``core.settings``; lists of rules live here. A missing
file, or a missing section, means the documented defaults. ``deploy/cxr-triage.example.yaml`` is a
commented example.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

PRODUCER_MANUFACTURER = "cxr-triage"
"""Manufacturer (0008,0070) of every object this system creates; such objects are never selected."""


def _upper(values: list[str]) -> list[str]:
    return [value.strip().upper() for value in values]


class SelectionRules(BaseModel):
    """Which received instances are queued for inference; every other one is skipped with a reason.

    An instance is selected when its Modality is listed (or it is a Secondary Capture image whose
    Body Part Examined is listed in ``secondary_capture_body_parts``), its Body Part Examined and
    View Position are listed or absent (as allowed), it has pixel data, and this system did not
    produce it.
    """

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    secondary_capture_body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "THORAX"])
    body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "THORAX"])
    allow_missing_body_part: bool = True
    view_positions: list[str] = Field(default_factory=lambda: ["PA", "AP"])
    allow_missing_view_position: bool = True

    _normalise = field_validator(
        "modalities", "secondary_capture_body_parts", "body_parts", "view_positions"
    )(_upper)


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selection: SelectionRules = Field(default_factory=SelectionRules)


def load_config(path: Path | None) -> NodeConfig:
    """Read and validate the YAML file at ``path``; the defaults when ``path`` is None."""
    if path is None:
        return NodeConfig()
    data = yaml.safe_load(path.read_text()) or {}
    return NodeConfig.model_validate(data)
