"""The node's YAML configuration file (``CXR_CONFIG``): selection rules, destinations, routing.

Settings that are a single value live in ``core.settings``; lists of rules live here. A missing
file, or a missing section, means the documented defaults. ``deploy/cxr-triage.example.yaml`` is a
commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


Output = Literal["sr", "sc"]
"""What we make of a study result: a Comprehensive 3D SR, or a Secondary Capture image."""


class Destination(BaseModel):
    """A DICOM peer we send results (and forwarded originals) to with C-STORE."""

    model_config = ConfigDict(extra="forbid")

    name: str
    ae_title: str = Field(max_length=16)
    host: str
    port: int = Field(gt=0, lt=65536)
    outputs: list[Output] = Field(
        default_factory=lambda: list[Output](["sr"]), description="Sent for every study result."
    )


class RuleCondition(BaseModel):
    """All given conditions must hold. ``attributes`` are DICOM keywords of the study's first
    image with the values that match (compared upper-case)."""

    model_config = ConfigDict(extra="forbid")

    positive: bool | None = None
    probability_at_least: float | None = Field(None, ge=0, le=1)
    attributes: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _upper_values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {keyword: _upper(values) for keyword, values in value.items()}


class RoutingRule(BaseModel):
    """When a study result meets ``when``, forward what ``forward`` names to ``to``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    when: RuleCondition = Field(default_factory=RuleCondition)
    forward: list[Literal["originals", "sr", "sc"]]
    to: list[str]


class DeliveryPolicy(BaseModel):
    """Retries of a delivery that failed for a transient reason (no connection, association
    rejected transiently, timeout, 0xA7xx): exponential backoff, then a failed state."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(6, ge=1)
    backoff_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        return float(min(self.backoff_seconds * 2 ** (attempt - 1), self.backoff_max_seconds))


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selection: SelectionRules = Field(default_factory=SelectionRules)
    destinations: list[Destination] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)

    @model_validator(mode="after")
    def _known_destinations(self) -> NodeConfig:
        names = [destination.name for destination in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        for rule in self.routing:
            unknown = set(rule.to) - set(names)
            if unknown:
                raise ValueError(f"routing rule {rule.name!r} names unknown {sorted(unknown)}")
        return self

    def destination(self, name: str) -> Destination:
        return next(d for d in self.destinations if d.name == name)


def load_config(path: Path | None) -> NodeConfig:
    """Read and validate the YAML file at ``path``; the defaults when ``path`` is None."""
    if path is None:
        return NodeConfig()
    data = yaml.safe_load(path.read_text()) or {}
    return NodeConfig.model_validate(data)
