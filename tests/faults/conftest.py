"""The fault tests' stack (tests/harness/fault_stack.py), started once per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emostream.settings import Settings
from tests.harness.fault_stack import FaultStack, fault_settings
from tests.harness.stack import running_stack


@pytest.fixture(scope="module")
def fault_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    state = tmp_path_factory.mktemp("faults")
    with running_stack(fault_settings(base_settings, state), state, timeout=240, kind=FaultStack) as stack:
        yield stack
