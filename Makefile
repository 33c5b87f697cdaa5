# `make lab`: install podsys and run its main job locally; `make test`: the test suite (CI runs this).
.PHONY: setup lab test test-unit test-integration inventories

setup:
	bash scripts/setup-dev.sh

# The main job on one machine: a head + 3 container nodes, deployed (base, Slurm, monitoring)
# and checked. Everything lives in ./lab; `podsys lab down --dir lab` removes it.
lab: setup
	podsys lab up --dir lab
	podsys deploy lab/lab.yaml
	podsys check lab/lab.yaml --output lab/report
	@echo "next: podsys lab ssh --dir lab head -- srun -N3 hostname; open lab/report/report.html; podsys lab down --dir lab"

# Three workers: each lab (and the modules sharing one) is one xdist group in one worker;
# tests/conftest.py assigns the groups and starts the longest first.
test: setup
	python3 -m pytest -m "not slow" -n 4 --dist loadgroup --no-loadscope-reorder

test-unit:
	python3 -m pytest tests/unit

test-integration:
	python3 -m pytest -m "integration and not slow"

# Sample rendered build directories of the example manifests, checked in; a unit test fails
# when they drift from what the renderer produces (run this target after changing rendering).
# The status service's code the build carries for the head is left out: it is podsys's own source.
inventories:
	for m in lab hgx-h100-32; do podsys render manifests/$$m.yaml --output inventories/$$m; done
	rm -rf inventories/*/provision/service inventories/*/health/runner inventories/*/.rendered.json  # copies of podsys code
