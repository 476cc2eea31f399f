# Two entry points that work on a fresh machine (they set everything up first):
#   make demo   — install, then run the demo on built-in data (report in anomalens-demo/index.html)
#   make test   — install, then run the test suite (the command .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup demo test test-docs test-fast benchmark
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,mnist,export,serve,ray,line,research,docs]'
	touch $@

demo: setup
	$(BIN)/anomalens demo --output anomalens-demo --overwrite

# pytest exits 5 when no test was collected; that is not a failure of the suite.
# Two pytest-xdist workers, each test file on one of them (its module fixtures fitted once), except that the
# contract's tests of a detector go with that detector's own test file, sharing its one fit (tests/conftest.py,
# worker_group). On 2 cores, quiet, the suite (1,755 tests) takes 6.2 min and the fast tier (1,547) 2.7
# (benchmarks/results/test_suite/); in one process it was 10.4 min for 1,316 tests.
PYTEST_PARALLEL ?= -n 2 --dist loadgroup
# The browser test (tests/test_serve_browser.py) drives Debian's chromium; it skips, saying why, where it cannot be installed.
test: setup
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "Chromium could not be installed: the browser test will be skipped"
	@(command -v mosquitto && command -v ffmpeg) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mosquitto ffmpeg) >/dev/null 2>&1 \
		|| echo "mosquitto / ffmpeg could not be installed: the broker and RTSP tests will be skipped"
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not docs"; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# The documentation as written: every bash / Python block of README.md and docs/ run in order in a fresh folder,
# one page per test, pages spread over both workers (tests/test_docs_run.py; the site's --strict build is in make test).
# A tier of its own (minutes of CPU: each documented command starts a process); .ci/run runs it after make test.
test-docs: setup
	$(BIN)/python -m pytest -q -n 2 --dist load -m docs tests/test_docs_run.py; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# The fast tier leaves out the browser, Ray, export (ONNX / OpenVINO, the detectors' export parity tests
# included), torchrun, docs, line (a real broker, stream or OPC UA server) and serve (`anomalens serve` as a
# process) and jobs (`anomalens benchmark` and the benchmark harness: every job a fresh process, 4-5 s of
# start-up each) tests: see TIERS in tests/conftest.py. `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not (browser or ray or export or ddp or docs or line or serve or jobs)"; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (offline-friendly).
benchmark: setup
	@test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "Fashion-MNIST unavailable: its rows will be skipped"
	$(BIN)/python benchmarks/run.py
