# Packaging targets; the Makefile has `include packaging/packages.mk`.
#   make packages        the .deb and .rpm in dist/ (cached: rebuilt only when their inputs change)
#   make test-packages   lint, then install and exercise them: the deb booted under systemd-nspawn,
#                        the rpm installed with rpm --root, the container image built with podman
# Tools come from Debian (tests/packaging/install.sh) and PyPI (a venv under
# /var/cache/hostwatch-peers/packaging-tools); nothing is installed into .venv.
.PHONY: packages packages-deps test-packages

packages:
	bash packaging/build.sh

packages-deps:
	bash tests/packaging/install.sh

# HOSTWATCH_REQUIRE_PACKAGES=1: a missing tool or a machine that cannot boot the container fails
# the run instead of skipping (under plain `make test` those tests skip with the reason)
test-packages: venv packages-deps packages
	HOSTWATCH_REQUIRE_PACKAGES=1 $(BIN)/pytest -q tests/packaging $(PYTEST_ARGS)
