"""The worklist and the queue dashboard in a real browser (Chromium), on a running node."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from db.models import Flag, FlagEvent, StudyResult
from tests.node import Node, storescu
from tests.servers import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by the Debian chromedriver."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver not installed (Debian packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_worklist_shows_every_study_and_a_reader_acknowledges_a_flag(
    embedded_node: Node, labelled_dicom_dir: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    positive = labelled_dicom_dir / "015_D_CR_pneumonia.dcm"
    negative = labelled_dicom_dir / "003_D_CR_normal.dcm"
    node = embedded_node
    with node.gateway(), node.worker(), node.web() as url:
        assert storescu(node.dicom_port, positive).returncode == 0
        assert storescu(node.dicom_port, negative).returncode == 0
        wait_until(lambda: len(node.scalars(select(StudyResult))) == 2, 120, "two results")

        browser.get(f"{url}/worklist")
        rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        studies = [row.get_attribute("data-study") for row in rows]
        # Newest first, both listed: the flag neither hides nor moves the negative study.
        assert studies == [dcmread(negative).StudyInstanceUID, dcmread(positive).StudyInstanceUID]
        flagged = rows[1]
        assert "flag-new" in flagged.get_attribute("class")
        assert "pneumonia suspected" in flagged.text
        assert "no pneumonia" in rows[0].text
        # A reader finds the study in PACS by accession number and patient, as sent.
        assert flagged.find_element(By.CSS_SELECTOR, ".accession").text == "KER00015"
        assert flagged.find_element(By.CSS_SELECTOR, ".patient").text == "Anon 015 (person630)"
        assert flagged.find_element(By.CSS_SELECTOR, ".study").text == "2026-12-04 XR CHEST"

        browser.find_element(By.ID, "reader").send_keys("Dr Reader")
        flagged.find_element(By.CSS_SELECTOR, "button[data-action=acknowledge]").click()
        wait_until(
            lambda: node.scalars(select(Flag.state)) == ["acknowledged"], 10, "the acknowledgement"
        )
        browser.get(f"{url}/worklist")
        assert "urgent · acknowledged" in browser.find_element(By.ID, "worklist").text

        browser.get(f"{url}/dashboard")
        assert "done: 2" in browser.find_element(By.ID, "jobs").text
        assert "sent" not in browser.find_element(By.ID, "deliveries").text  # no destination
        assert "STORESCU" in browser.find_element(By.ID, "associations").text

        (listed,) = [
            row for row in get_json(f"{url}/api/worklist") if row["accession_number"] == "KER00003"
        ]
        assert (listed["patient_id"], listed["positive"]) == ("IM-0754", False)

        health = get_json(f"{url}/healthz")
        assert health == {"status": "ok", "database": "ok", "broker": "ok"}
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'cxr_jobs{state="done"} 2.0' in metrics
        assert 'cxr_flags{state="acknowledged"} 1.0' in metrics

    (flag,) = node.scalars(select(Flag))
    assert flag.state_changed_by == "Dr Reader"
    events = node.scalars(select(FlagEvent).order_by(FlagEvent.id))
    assert [(e.event, e.actor) for e in events] == [
        ("raised", "cxr-triage"),
        ("acknowledged", "Dr Reader"),
    ]
