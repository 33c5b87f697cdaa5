# `make lab`: install podsys and run its main job locally; `make test`: the test suite (CI runs this).
.PHONY: setup lab test test-unit test-integration

setup:
	bash scripts/setup-dev.sh

lab: setup
	podsys validate manifests/lab.yaml
	podsys render manifests/lab.yaml

test: setup
	python3 -m pytest -m "not slow"

test-unit:
	python3 -m pytest tests/unit

test-integration:
	python3 -m pytest -m "integration and not slow"
