# Squall: `make run` serves on the embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help install run test test-fast lint bench clean

help:
	@echo "make run        the service on the embedded defaults (SQLite in data/, a chat in this terminal, the web UI)"
	@echo "make test       lint and every test (starts PostgreSQL, sshd, an IRC server and Chromium)"
	@echo "make test-fast  lint and the tests not marked slow or integration"
	@echo "make lint       ruff and the layer contracts"
	@echo "make bench      every benchmark in bench/"
	@echo "make install    .venv with Squall and its test tools (every other target does it when needed)"
	@echo "make clean      delete .venv AND data/: the database, the datastore key and the packs installed there"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/squall serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Both cores: the suite mostly waits on servers and subprocesses. A file's tests stay on one worker
# (--dist loadfile), so a module's own server (sshd, PostgreSQL, Chromium) starts once.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not integration"

bench: install
	$(BIN)/python bench/executions.py
	$(BIN)/python bench/workflows.py
	$(BIN)/python bench/datastore.py
	$(BIN)/python bench/aliases.py
	$(BIN)/python bench/chat.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/remote.py
	$(BIN)/python bench/drills.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/ui.py --quick
	$(BIN)/python bench/instructions.py  # needs valgrind (Debian: apt-get install valgrind)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache *.egg-info
