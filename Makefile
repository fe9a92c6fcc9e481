# The two commands of the README, and the steps they are made of.
# Every target installs what it needs into .venv first (python3 >= 3.11 is all it takes).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-workspace

.PHONY: demo test install browser check-sync notebooks nbtest pytest readme export clean bench docs screenshots

$(STAMP): pyproject.toml settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## make demo: the whole continuous-training loop, headless, in a fresh workspace on the embedded default (SQLite, local artifacts)
demo: $(STAMP)
	@if [ -e $(DEMO) ]; then echo "$(DEMO)/ exists from an earlier demo: remove it (rm -rf $(DEMO)) or run make demo DEMO=another-folder" >&2; exit 1; fi
	$(BIN)/mlwb init $(DEMO)
	cd $(DEMO) && $(CURDIR)/$(BIN)/mlwb run $(CURDIR)/nbs/jobs/loop.ipynb --name demo
	@echo
	@echo "== churn@production and how it moved";  $(BIN)/mlwb -W $(DEMO) models history churn
	@echo; echo "== Jobs the loop ran";                 $(BIN)/mlwb -W $(DEMO) jobs history
	@echo; echo "== Alerts";                            $(BIN)/mlwb -W $(DEMO) alerts ls --status all
	@echo
	@echo "Runs: mlwb -W $(DEMO) runs ls   Model versions: mlwb -W $(DEMO) models ls churn   The loop's notebook: $(DEMO)/jobs/demo/"
	@echo "Workspace: $(DEMO)/   Store: $(DEMO)/.mlwb/mlwb.db   Artifacts: $(DEMO)/.mlwb/artifacts/"
	@echo "Reports: $(DEMO)/reports/   Executed notebooks: $(DEMO)/jobs/   Prediction log: $(DEMO)/.mlwb/artifacts/predictions/"
	@if [ -f _docs/index.html ]; then echo "Docs site: _docs/index.html"; else echo "Docs site: make docs, then open _docs/index.html"; fi

## make test: every check: export-sync, notebook tests, pytest (browser tests drive Debian's chromium)
test: $(STAMP) browser check-sync notebooks pytest

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

## make screenshots: rerun the browser tests and copy their screenshots to nbs/images/ (the README shows them)
screenshots: $(STAMP) browser
	$(BIN)/python -m pytest tests/test_explorer_browser.py tests/test_dashboard_browser.py -q
	@mkdir -p nbs/images
	cp tests/artifacts/explorer.png tests/artifacts/evaluation_dashboard.png tests/artifacts/evaluation_widget.png nbs/images/

readme: $(STAMP)
	$(BIN)/python .ci/readme.py

# The notebook tests: every notebook executed afresh with nbdev's executor (slow and eval:false cells skipped, as nbdev_test does),
# any failing cell fails it; the docs site is built from the same run, so CI executes each notebook once.
notebooks: $(STAMP)
	$(BIN)/python .ci/docs.py --force

## make docs: the docs site, offline, into _docs/ (open _docs/index.html); README.md regenerated from nbs/index.ipynb.
## Notebooks are executed (cached by content in _docs/.cache/), processed by nbdev, built by Sphinx + myst-nb.
docs: $(STAMP)
	$(BIN)/python .ci/docs.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/tracking.py

clean:
	rm -rf $(DEMO) _docs _proc .pytest_cache
