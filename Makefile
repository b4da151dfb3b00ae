# Tailor: `make run` runs the pipeline on the embedded default; `make test` runs every test.
# Both set up what they need first (idempotent): a pinned .venv, the S3A jars, Debian libs.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
JARS := .spark-jars
PYTEST_ARGS ?=

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)
export OPENBLAS_NUM_THREADS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := True
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system-libs run test test-fast bench mlflow-ui clean bento serve bench-serve

setup: system-libs $(VENV)/.installed $(JARS)/.installed

# Java for Spark, OpenBLAS for native ALS, libgomp for implicit. Installed only where missing
# and only when running as root (elsewhere: a note on what to install).
system-libs:
	@missing=""; \
	for pkg in libopenblas0-pthread libgomp1; do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ -n "$(WANT_WRK)" ]; then command -v wrk >/dev/null || missing="$$missing wrk"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing" >&2; exit 1; fi; \
	fi

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip wheel setuptools
	$(VENV)/bin/pip install -q -r requirements.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(JARS)/.installed: conf/s3a-jars.pom.xml
	mvn -q -f conf/s3a-jars.pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(JARS)
	touch $@

run: setup
	$(VENV)/bin/tailor pipeline

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Each script rewrites only its own section of bench/report.md.
bench: setup
	$(PY) bench/run.py --out bench/report.md
	$(PY) bench/identity_bench.py --out bench/report.md
	$(PY) bench/features_bench.py --out bench/report.md
	PYTHONPATH=$(CURDIR) $(PY) bench/recommenders_ml100k.py --out bench/report.md
	$(PY) bench/segments_bench.py --out bench/report.md

# The recommendation service: build the bento from the MLflow champion, then serve it.
bento: setup
	$(VENV)/bin/tailor build-service

serve: bento
	$(VENV)/bin/tailor serve

# wrk (the HTTP load generator) is a system package needed only here.
bench-serve: WANT_WRK := 1
bench-serve: setup
	PYTHONPATH=$(CURDIR) $(PY) bench/serve_bench.py --out bench/report.md

# The store the jobs track to: MLFLOW_TRACKING_URI when set, else the embedded default. A
# tracking server (http[s]://) is its own UI.
mlflow-ui: setup
	@store="$${MLFLOW_TRACKING_URI:-sqlite:///var/mlflow.db}"; \
	case "$$store" in \
	  http://*|https://*) echo "MLflow UI: $$store (the tracking server)";; \
	  *) $(VENV)/bin/mlflow ui --backend-store-uri "$$store" --host 127.0.0.1 --port 5000;; \
	esac

clean:
	rm -rf var spark-warehouse
