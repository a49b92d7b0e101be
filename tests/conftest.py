"""Shared pytest set-up: peer fixtures live in tests/peers/fixtures_*.py."""

from pathlib import Path

pytest_plugins = sorted(f"tests.peers.{path.stem}" for path in (Path(__file__).parent / "peers").glob("fixtures_*.py"))
