# Set-up is part of every target: the first `make serve` or `make test` on a fresh
# machine creates .venv with torch installed first, pinned, then the rest from
# constraints.txt (one tested set of versions).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/rocm6.4 for an AMD GPU
TORCH_INDEX ?=
PYTEST_ARGS ?=
ARGS ?=

.PHONY: install serve demo test check bench clean gpu-wheels vllm-env

$(VENV)/.installed: pyproject.toml constraints.txt client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	# bge-client (client/) in the same command: the retrieval extra requires it, and it is
	# not on PyPI.
	$(BIN)/pip install --quiet -c constraints.txt -e ./client -e ".[test,redis,bench,retrieval,runpod]"
	# runpod declares fastapi[all], whose extras the worker never uses; pyproject's runpod
	# extra holds the rest of its requirements.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt runpod
	# langchain-cohere declares cohere<6; its embeddings run on the pinned cohere 7
	# (tests/integration/test_cohere_embed.py); langchain-core comes with langchain-openai.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt langchain-cohere
	touch $@

# The RAG frameworks' clients (tests/integration/test_frameworks.py) in a venv of their own:
# their pins conflict with the service's (cohere<6, huggingface_hub>=1). Every package is
# locked in the requirements file, so nothing is resolved here; none of them needs torch.
FRAMEWORKS_VENV := .venv-frameworks
FRAMEWORKS_REQUIREMENTS := tests/frameworks/requirements.txt

$(FRAMEWORKS_VENV)/.installed: $(FRAMEWORKS_REQUIREMENTS) client/pyproject.toml
	test -x $(FRAMEWORKS_VENV)/bin/python || $(PYTHON) -m venv $(FRAMEWORKS_VENV)
	$(FRAMEWORKS_VENV)/bin/pip install --quiet --no-deps -r $(FRAMEWORKS_REQUIREMENTS)
	# bge-client and its framework components (tests/integration/test_client_frameworks.py);
	# its dependencies are locked in the requirements file.
	$(FRAMEWORKS_VENV)/bin/pip install --quiet --no-deps -e ./client
	$(FRAMEWORKS_VENV)/bin/pip check
	touch $@

# infinity_emb (the infinity backend and the benchmark's peer) and FlagEmbedding (the flag
# backend's test oracle) in a venv of their own: infinity-emb pins numpy<2 and
# sentence-transformers<4 (so transformers<5), and FlagEmbedding 1.4.2 does not import
# under transformers 5. constraints-infinity.txt is the last set both ran on.
INFINITY_VENV := .venv-infinity

$(INFINITY_VENV)/.installed: pyproject.toml constraints-infinity.txt
	test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(INFINITY_VENV)/bin/pip install --quiet -c constraints-infinity.txt -e ".[infinity,oracle,test,redis,bench]"
	touch $@

install: $(VENV)/.installed $(FRAMEWORKS_VENV)/.installed $(INFINITY_VENV)/.installed

serve: install
	$(BIN)/bge-serve $(ARGS)

# The whole API with no hub access: tiny random-weight models built here, served on CPU
# (the console and /health say the weights are random).
DEMO_MODELS ?= .demo-models
demo: install
	test -f $(DEMO_MODELS)/bge-m3/RANDOM_WEIGHTS || $(BIN)/python -m tests.fixtures.tiny_models $(DEMO_MODELS)
	EMBEDDING_MODEL_NAME=$(DEMO_MODELS)/bge-m3 RERANKER_MODEL_NAME=$(DEMO_MODELS)/bge-reranker-v2-m3 \
		DEVICE=cpu $(BIN)/bge-serve $(ARGS)

check: install
	$(BIN)/ruff check engine backends api retrieval worker client tests bench
	$(BIN)/ruff format --check engine backends api retrieval worker client tests bench
	$(BIN)/mypy
	# bge-client's framework modules, against the frameworks they subclass (pyproject's
	# [tool.mypy] says why they are not in the run above).
	$(BIN)/mypy --python-executable $(FRAMEWORKS_VENV)/bin/python \
		client/bge_client/langchain.py client/bge_client/llama_index.py client/bge_client/haystack.py
	$(BIN)/codespell engine backends api retrieval worker client tests bench deploy README.md docs

# Two sets, one per environment: the service's stack, then what needs infinity_emb. The
# first set starts vLLM servers from .venv-vllm (tests/integration/test_remote_vllm_live.py).
test: check vllm-env
	$(BIN)/python -m pytest -m "not infinity" $(PYTEST_ARGS)
	$(INFINITY_VENV)/bin/python -m pytest -m infinity tests/infinity $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(FRAMEWORKS_VENV) $(INFINITY_VENV) .mypy_cache .ruff_cache .pytest_cache

bench: install
	$(BIN)/python -m bench.load $(ARGS)

# vLLM's CPU build, bench.load's peer (it starts it from here when this venv exists), in a
# venv of its own: its pins (transformers 5, its own fastapi) are not the service's. torch
# first, pinned, so nothing pulls a CUDA build; then every package locked, with --no-deps.
VLLM_VENV := .venv-vllm
VLLM_REQUIREMENTS := bench/vllm-requirements.txt

$(VLLM_VENV)/.installed: $(VLLM_REQUIREMENTS)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r $(VLLM_REQUIREMENTS)
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# Python 3.12 manylinux wheels of what bench/gpu.sh needs on a GPU machine with no network
# beyond the torch, transformers, numpy and sentence-transformers it has (docs/gpu-benchmark.md).
gpu-wheels: $(VENV)/.installed
	$(BIN)/python -m bench.gpu_wheels download .whl
