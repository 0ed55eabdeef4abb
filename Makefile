# `make demo` and `make test` work on a fresh machine: each creates .venv when
# missing and installs the project with the pinned PyTorch pair.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS ?= -q

.PHONY: demo test lint install bench browser clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/decide demo

# The report's browser test uses Debian's chromium; install it when we can (root + apt), else it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get install -y -q chromium >/dev/null 2>&1 || echo "chromium not installed: the report.html browser test will be skipped"; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f --quick || exit 1; done

clean-venv:
	rm -rf $(VENV)
