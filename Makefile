# The two README commands: `make demo` and `make test`. Both create .venv and install everything on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: install test demo bench clean

install: $(STAMP)

# Re-runs only when the pins or the packaging change; otherwise `make install` is a no-op.
$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

demo: install
	MPLBACKEND=Agg $(PY) scripts/appendix_b_demo.py --out results/appendix_b

bench: install
	$(PY) benchmarks/focal_loss.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/temperature.py

clean:
	rm -rf $(VENV) results .pytest_cache
