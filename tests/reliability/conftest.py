"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest
from reliability_support import ExtractionServer


@pytest.fixture(scope="session")
def extraction_server(tmp_path_factory) -> ExtractionServer:
    server = ExtractionServer(tmp_path_factory.mktemp("extraction-logs"))
    yield server
    server.close()
