# The two quick-start commands (README): `make demo` and `make test`.
# Both create the project's own virtual environment from files in this repository.
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgekit-installed

.PHONY: demo test venv clean chromium

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23"
	# torch first, alone: pip then takes the pinned CPU wheel instead of resolving a CUDA build.
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## Run the main job end to end on the bundled default model and sample image.
demo: $(STAMP)
	$(PY) examples/quickstart.py --out runs/quickstart

## Run the test suite (what CI runs).
# The HTML report is checked in headless Chromium (Debian's package) by a screenshot test.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test: chromium is not installed (apt-get install chromium); the report screenshot test will skip" >&2; fi; }

# pytest exits 5 when it collected nothing: that is a failure, said out loud.
test: $(STAMP) chromium
	@$(VENV)/bin/pytest -n 2 --dist loadfile -q $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$status

## The Raspberry Pi check (docs/boards.md): the board SDK runs real bundles on an emulated arm64
# Debian (qemu-user) and must agree with this machine. Downloads are cached in build/board-arm64.
.PHONY: board-check
board-check: $(STAMP)
	PYTHON=$(PY) tools/board_check_arm64.sh --cache build/board-arm64

clean:
	rm -rf $(VENV) runs build dist *.egg-info
