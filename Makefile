# The two commands of the README, and the steps they are made of.
# Every target installs what it needs into .venv first (python3 >= 3.11 is all it takes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-workspace

.PHONY: demo test install browser check-sync nbtest pytest readme export clean bench

$(STAMP): pyproject.toml settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## make demo: init a workspace and run the training job on the embedded default (SQLite, local artifacts)
demo: $(STAMP)
	$(BIN)/mlwb init $(DEMO)
	@mkdir -p $(DEMO)/jobs
	cd $(DEMO) && MLWB_SOURCE=$(CURDIR)/nbs/jobs/train.ipynb ../$(BIN)/papermill --no-progress-bar \
		$(CURDIR)/nbs/jobs/train.ipynb jobs/train-$$(date +%Y%m%d-%H%M%S).ipynb
	@echo
	@echo "== Runs in $(DEMO) (newest first)"
	@$(BIN)/mlwb -W $(DEMO) runs ls -n 5
	@echo
	@echo "== The run just made"
	@$(BIN)/mlwb -W $(DEMO) runs show $$($(BIN)/mlwb -W $(DEMO) runs ls -q -n 1)
	@echo
	@echo "Executed notebooks: $(DEMO)/jobs/   Reports: $(DEMO)/reports/   Store: $(DEMO)/.mlwb/mlwb.db   Artifacts: $(DEMO)/.mlwb/artifacts/"

## make test: every check: export-sync, notebook tests, pytest (browser tests drive Debian's chromium)
test: $(STAMP) browser check-sync nbtest pytest

# Debian's chromium for the browser tests; tests never download a browser of their own
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium chromium-driver' (browser tests skip without it, and fail under CI)"; fi; \
	fi

check-sync: $(STAMP)
	BIN=$(BIN) .ci/check-sync

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	$(BIN)/python -m pytest tests -q

export: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

readme: $(STAMP)
	$(BIN)/python .ci/readme.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/tracking.py

clean:
	rm -rf $(DEMO) _docs _proc .pytest_cache
