# One task runner; CI (.ci/run) calls these targets.
PY ?= .venv/bin/python
VENV ?= .venv

.PHONY: install demo test test-unit test-integration lint types bench lock
install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps -e .

demo:
	$(VENV)/bin/flowwarden demo

# The README's test command: system packages, services, then every test (unit, integration, e2e).
test:
	bash scripts/install-system-deps.sh
	bash scripts/start-services.sh
	$(PY) -m pytest -q tests

test-unit:
	$(PY) -m pytest -q tests/unit

test-integration:
	$(PY) -m pytest -q -m "integration or e2e" tests

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

types:
	$(VENV)/bin/mypy flowwarden tests

bench:
	$(PY) benchmarks/run_all.py

lock:
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^flowwarden' > requirements.lock
