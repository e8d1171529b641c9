"""The pure rules behind results: study completeness, the study rule, routing, retry backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import DeliveryPolicy, NodeConfig, load_config
from dicom_gateway.statuses import is_out_of_resources, is_stored
from worker.routing import Route, routes
from worker.study import combine, completion

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
QUIET = timedelta(seconds=60)


def test_a_study_is_complete_when_released_after_its_last_image_or_quiet() -> None:
    assert completion(T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2), QUIET) == (
        "released"
    )
    # Released before a later image arrived (that one came in an aborted association).
    assert completion(T0, T0 - timedelta(seconds=1), T0 + timedelta(seconds=5), QUIET) is None
    assert completion(T0, None, T0 + timedelta(seconds=59), QUIET) is None
    assert completion(T0, None, T0 + timedelta(seconds=60), QUIET) == "quiet"


def test_the_study_takes_its_most_suspicious_frontal_image() -> None:
    assert combine([0.2, 0.7, 0.4], threshold=0.6) == (0.7, True)
    assert combine([0.2, 0.5], threshold=0.6) == (0.5, False)
    assert combine([0.6], threshold=0.6) == (0.6, True)
    with pytest.raises(ValueError, match="at least one"):
        combine([], threshold=0.5)


CONFIG = NodeConfig.model_validate(
    {
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "pacs", "port": 104},
            {
                "name": "viewer",
                "ae_title": "VIEWER",
                "host": "viewer",
                "port": 104,
                "outputs": ["sc"],
            },
            {"name": "urgent", "ae_title": "URGENT", "host": "reading", "port": 104, "outputs": []},
        ],
        "routing": [
            {
                "name": "positive to urgent",
                "when": {"positive": True},
                "forward": ["originals", "sr"],
                "to": ["urgent"],
            },
            {
                "name": "very likely, ER station",
                "when": {
                    "probability_at_least": 0.9,
                    "attributes": {"StationName": ["er1", "ER2"]},
                },
                "forward": ["sr"],
                "to": ["urgent", "pacs"],
            },
        ],
    }
)


def test_destinations_get_their_outputs_and_rules_add_forwards() -> None:
    negative = routes(CONFIG, positive=False, probability=0.1, attributes={})
    assert negative == [Route("pacs", "sr"), Route("viewer", "sc")]
    positive = routes(CONFIG, positive=True, probability=0.8, attributes={"StationName": "ER1"})
    assert positive == [
        Route("pacs", "sr"),
        Route("urgent", "original"),
        Route("urgent", "sr"),
        Route("viewer", "sc"),
    ]
    # Both rules name (urgent, sr): it is sent once.
    er = routes(CONFIG, positive=True, probability=0.95, attributes={"StationName": "er2 "})
    assert er.count(Route("urgent", "sr")) == 1
    assert routes(CONFIG, positive=False, probability=0.95, attributes={"StationName": None}) == (
        negative
    )


def test_routing_rules_must_name_known_destinations() -> None:
    with pytest.raises(ValidationError, match="unknown"):
        NodeConfig.model_validate(
            {"routing": [{"name": "r", "forward": ["sr"], "to": ["nowhere"]}]}
        )


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    policy = DeliveryPolicy(backoff_seconds=2, backoff_max_seconds=20)
    assert [policy.delay_after(n) for n in range(1, 6)] == [2, 4, 8, 16, 20]


def test_peer_statuses() -> None:
    assert is_stored(0x0000) and is_stored(0xB000)
    assert not is_stored(0xA700) and not is_stored(0xC000)
    assert is_out_of_resources(0xA700) and is_out_of_resources(0xA7FF)
    assert not is_out_of_resources(0xA900)


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "cxr-triage.example.yaml"
    config = load_config(example)
    assert config.destinations and config.routing
