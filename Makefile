# Two commands: `make demo` (the main job) and `make test`. Each builds .venv on a fresh machine.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build available on our machines
	$(VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	# .[dev] pulls in .[app] (starlette, uvicorn) and playwright, which drives the system chromium
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python tutorials/02_das_equality.py

# The browser tests (tests/test_app_browser.py) drive Debian's chromium; without it they fail
# and say so (install: apt-get install -y chromium; .ci/run does), unless PYVENE_LIKE_SKIP_BROWSER=1.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py
	$(VENV)/bin/python benchmarks/das.py
	$(VENV)/bin/python benchmarks/generation.py
	$(VENV)/bin/python benchmarks/collect.py
	$(VENV)/bin/python benchmarks/scale.py
	$(VENV)/bin/python benchmarks/patching.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pyvene_like tests tutorials benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
