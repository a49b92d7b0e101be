"""Fixtures of the package tests: the built packages, shared by every module here."""

from __future__ import annotations

import pytest

from tests.packaging.harness import Packages, build_packages, need_commands, need_root


@pytest.fixture(scope="session")
def packages() -> Packages:
    need_root()
    need_commands("dpkg-deb", "objdump", "strip")
    return build_packages()
