# JCDL: Caffe with the JCDL layers, pycaffe and the jcdl toolkit.
#   make            set-up: Debian packages, .venv, Caffe (CPU), tools in .venv/bin
#   make test       set-up, then Caffe's gtest suite with ours, then pytest
#   make demo       the whole method on a synthetic dataset (runs/demo/)
#   make test-caffe Caffe's gtest suite alone
#   make notebooks  executes notebooks/*.ipynb on runs/demo into runs/notebooks/
#   make cuda       the CUDA build into build/cuda (CUDA_ARCH=90 by default)
#   CUDA=1 make     set-up with the CUDA build as the one .venv uses
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

SYSTEM_PYTHON ?= /usr/bin/python3
FLAVOUR := $(if $(filter 1,$(CUDA)),cuda,cpu)
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TOOLS := caffe convert_imageset_r compute_image_mean convert_imageset \
         extract_features upgrade_net_proto_text upgrade_net_proto_binary \
         upgrade_solver_proto_text
GTEST_FILTER ?= -*GPU*

.PHONY: all deps caffe install test test-caffe test-python demo notebooks cuda clean

all: install

deps:
	@tools/install_deps.sh

$(PY): | deps
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,notebooks]'
	@touch $@

caffe: $(VENV)/.installed
	@caffe_KL/build.sh $(FLAVOUR)

install: caffe
	@tools/install_tools.sh $(VENV) $(CURDIR)/build/$(FLAVOUR)/build/tools $(SITE) $(TOOLS)
	@echo $(CURDIR)/build/$(FLAVOUR)/src/python > $(SITE)/pycaffe.pth
	@$(PY) -c 'import caffe, jcdl' && echo "[make] ready: . $(VENV)/bin/activate  (caffe, convert_imageset_r, jcdl, python with pycaffe)"

test-caffe: install
	@caffe_KL/build.sh $(FLAVOUR) test.testbin
	cd build/$(FLAVOUR)/src && ../build/test/test.testbin --gtest_filter='$(GTEST_FILTER)'

test-python: install
	$(PY) -m pytest -q tests

test: test-caffe test-python

demo: install
	$(VENV)/bin/jcdl demo --out runs/demo

runs/demo/metrics.json: | install
	$(VENV)/bin/jcdl demo --out runs/demo

notebooks: install runs/demo/metrics.json
	$(PY) tools/run_notebooks.py --out runs/notebooks notebooks/*.ipynb

cuda: $(VENV)/.installed
	@caffe_KL/build.sh cuda

clean:
	rm -rf build $(VENV) runs

# jcdl serve's page over the demo's net, in headless chromium (the demo is
# made first when missing): runs/serve/page.png, page-narrow.png
.PHONY: screenshot
screenshot: install runs/demo/metrics.json
	$(PY) tools/serve_screenshot.py --demo runs/demo --out runs/serve
