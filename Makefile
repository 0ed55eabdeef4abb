# `make demo` and `make test` work on a fresh machine: each creates .venv when
# missing and installs the project with the pinned PyTorch pair.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS ?= -q

.PHONY: demo test lint install bench browser clean-venv mutate docs

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
	$(BIN)/pytest -n 2 --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The guides in docs/ as a site in site/ (MkDocs + Material, the `docs` extra that `dev` includes).
# --strict: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails the build.
# NO_MKDOCS_2_WARNING silences Material's banner about its end of life, which is not about these docs.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f --quick || exit 1; done

# Mutation testing of the safety layer's statistics (decision/gate.py, evaluate.py, monitor.py,
# cxr/thresholds.py; configured in [tool.mutmut] of pyproject.toml). Not part of `make test`: it takes
# tens of minutes on 2 cores. mutants/ keeps the mutated copy and the results, so a rerun tests only
# the functions that changed. The last command lists every mutant not killed; `$(BIN)/mutmut show NAME`
# prints one's diff. MUTATE_JOBS sets the number of parallel workers.
MUTATE_JOBS ?= 2
mutate: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS)
	$(BIN)/mutmut results

clean-venv:
	rm -rf $(VENV)
