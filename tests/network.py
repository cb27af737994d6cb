"""Network off for tests: every torchvision and torch.hub download ends in ``urlopen``."""

import urllib.request
from urllib.error import URLError

import pytest
import torch.hub


def _offline(*args: object, **kwargs: object) -> None:
    raise URLError("network disabled in tests")


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download fail at once, as offline."""
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    monkeypatch.setattr(torch.hub, "urlopen", _offline)  # torch.hub imported it by name
