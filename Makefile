# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PHOTOS ?= ../shared/data/labelled
OUT ?= out

.PHONY: demo test bench install clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/facejob index $(PHOTOS) --out $(OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
