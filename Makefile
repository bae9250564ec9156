# Squall: `make run` serves on the embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

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
