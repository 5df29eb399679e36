# The README's two commands are `make demo` and `make test`; both set everything up first.
.PHONY: setup demo test test-slow lint format bench gpu-check clean

VENV := .venv/bin

setup:
	bash setup.sh

demo: setup
	$(VENV)/computeswarm demo

test: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	bash tests/with_postgres.sh $(VENV)/pytest -m "not bench and not slow" --durations=40 tests

# Slow tests that CI leaves out (their main paths are covered by faster ones in CI).
test-slow: setup
	$(VENV)/pytest -m slow tests

lint: setup
	$(VENV)/ruff check .

format: setup
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

# Benchmarks: slow, noisy, never in CI. Each prints its figure as a ratio to a baseline.
bench: setup
	$(VENV)/python -m computeswarm.tests.bench.overlay_throughput
	$(VENV)/python -m computeswarm.tests.bench.heartbeats
	$(VENV)/python -m computeswarm.tests.bench.market
	$(VENV)/python -m computeswarm.tests.bench.market_rounds
	$(VENV)/python -m computeswarm.tests.bench.lease_latency
	$(VENV)/python -m computeswarm.tests.bench.training
	$(VENV)/python -m computeswarm.tests.bench.gateway
	$(VENV)/python -m computeswarm.tests.bench.sweep
	$(VENV)/python -m computeswarm.tests.bench.store_transfer
	$(VENV)/python -m computeswarm.tests.bench.dataset_transfer

# On a machine with a GPU (not in CI): the lora workload with NCCL and bf16, step time.
gpu-check: setup
	$(VENV)/python -m computeswarm.tests.bench.gpu_lora

clean:
	$(VENV)/computeswarm testbed clean
