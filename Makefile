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

# The whole first morning: index, then cluster/label/dedup, then the review page.
demo: $(BIN)/.installed
	$(BIN)/facejob index $(PHOTOS) --out $(OUT)
	$(BIN)/facejob reduce $(OUT)
	$(BIN)/facejob report $(OUT)
	@echo
	@echo "Open the review page: $(abspath $(OUT))/report/index.html"
	@echo "Next (facejob is $(BIN)/facejob; or run 'source $(BIN)/activate' once):"
	@echo "  $(BIN)/facejob search $(OUT) PHOTO          # who in the archive looks like the faces in PHOTO"
	@echo "  $(BIN)/facejob label $(OUT) --labels FOLDER # name people: one subfolder of photos per person"
	@echo "  $(BIN)/facejob reduce $(OUT) --corrections corrections.json && $(BIN)/facejob report $(OUT)"
	@echo "  $(BIN)/facejob index $(PHOTOS) --out $(OUT) # again after new photos: only new ones are done"

test: $(BIN)/.installed
	$(BIN)/lint-imports  # the package layers (pyproject.toml [tool.importlinter]): a wrong-way import fails
	# Two workers, each its own session (its own Ray head and moto server); --dist loadfile keeps a
	# file on one worker, so its module fixtures (a Ray, an indexed folder) are made once.
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
