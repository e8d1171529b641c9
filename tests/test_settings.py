"""Settings that would make invalid DICOM are refused when a command starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.uid import PYDICOM_ROOT_UID

from core.settings import Settings


def test_the_uid_root_defaults_to_pydicoms_and_takes_a_sites_root() -> None:
    assert Settings().uid_root == PYDICOM_ROOT_UID
    assert Settings(uid_root="1.2.840.99999.").uid_root == "1.2.840.99999."


@pytest.mark.parametrize(
    "root",
    [
        "1.2.840.99999",  # no trailing dot: generated UIDs would run into the root's last part
        "1.2.840.099.",  # a component with a leading zero is not a UI value (PS3.5 9.1)
        "1.2.a.",
        "1." + "1234567890." * 4,  # too long to leave room for a unique suffix
    ],
)
def test_an_invalid_uid_root_is_refused(root: str) -> None:
    with pytest.raises(ValidationError, match="uid_root"):
        Settings(uid_root=root)
