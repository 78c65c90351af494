# Two entry points: `make serve` runs the registry on the embedded default, `make test` runs the suite.
PY ?= python3

.PHONY: install install-dev chromium test lint serve bench

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .

install-dev:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,hf,postgres,s3]'
	# the reference LoRAHub implementation, for parity tests; its declared dependency is wrong
	$(PY) -m pip install --no-deps lorahub==0.1.0

# the browser tests drive Debian's chromium headless (never a browser build downloaded by
# playwright); CI runs as root
chromium:
	@[ -x /usr/bin/chromium ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: install-dev chromium
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint:
	$(PY) -m ruff check .

serve: install
	lorahive serve
