# Every target installs what it needs into .venv first, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench lint format clean screenshots swagger-ui

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dp plan examples/sales.py
	$(BIN)/dp run examples/sales.py

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples docs/hooks
	$(BIN)/ruff format --check src tests bench examples docs/hooks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench examples docs/hooks
	$(BIN)/ruff check --fix src tests bench examples docs/hooks

screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py

# Re-vendor swagger-ui (served offline at /docs) from the npm registry, pinned.
SWAGGER_UI := 5.35.0
SWAGGER_DIR := src/dp/service/dashboard/static/vendor/swagger-ui
swagger-ui:
	rm -rf .swagger-ui && mkdir .swagger-ui && cd .swagger-ui && npm install --no-save --ignore-scripts swagger-ui-dist@$(SWAGGER_UI)
	for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do cp .swagger-ui/node_modules/swagger-ui-dist/$$f $(SWAGGER_DIR)/; done
	sed -i 's/sourceMappingURL=[^ ]*//' $(SWAGGER_DIR)/swagger-ui-bundle.js $(SWAGGER_DIR)/swagger-ui.css
	rm -rf .swagger-ui

clean:
	rm -rf $(VENV) .dp .pytest_cache .mypy_cache .ruff_cache
