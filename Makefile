# `make run`: a local service with demo data on SQLite; `make test`: the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
LOYALTY := $(VENV)/bin/loyalty
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test fuzz lint openapi bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(LOYALTY) db upgrade
	@echo "Admin API key (keep it; shown once):"
	@$(LOYALTY) demo
	$(LOYALTY) serve --host $(HOST) --port $(PORT)

# SQLite by default; set LOYALTY_TEST_DATABASE_URL=postgresql+psycopg://… for PostgreSQL.
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# A longer run of the API fuzzing and the ledger state machine than CI's bounded one.
fuzz: $(VENV)/.installed
	LOYALTY_FUZZ_EXAMPLES=$${LOYALTY_FUZZ_EXAMPLES:-200} LOYALTY_PROPERTY_EXAMPLES=$${LOYALTY_PROPERTY_EXAMPLES:-300} \
		$(PY) -m pytest tests/test_fuzz_api.py tests/test_ledger_properties.py $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rules loyalty_api tests bench

openapi: $(VENV)/.installed
	$(PY) -m loyalty_api.openapi > openapi.yaml

bench: $(VENV)/.installed
	bench/run

clean:
	rm -rf $(VENV) instance *.egg-info
