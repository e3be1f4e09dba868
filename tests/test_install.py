"""Installs stay reproducible: every distribution in the test environment is pinned in constraints.txt at
the version installed, so a package added without a pin (or a pin that setup did not apply) shows up here
instead of as a red CI after some release elsewhere."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_package_is_pinned_at_its_version():
    pins = _pins()
    unpinned, moved = [], []
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name == "muon-ablations":
            continue
        version = dist.version.split("+", 1)[0]  # torch's local label (+cpu) is not part of the pin
        if name not in pins:
            unpinned.append(f"{name}=={version}")
        elif pins[name] != version:
            moved.append(f"{name}: installed {version}, pinned {pins[name]}")
    assert not unpinned and not moved, (
        "the environment differs from constraints.txt (run scripts/setup.sh; to move the pins, "
        f"scripts/update_pins.sh): unpinned {unpinned}, moved {moved}")

