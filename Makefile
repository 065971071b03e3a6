# make demo : set up .venv and run the demo on the bundled sample (results in runs/demo/)
# make test : set up .venv and run the whole test suite
#
# The environment is cached outside the clone, keyed by a hash of setup.cfg and the
# torch pair, so a fresh clone reuses it instead of reinstalling torch (~5 GB); each
# clone's own small .venv reads it and holds only that clone's editable install. Set
# VENV_CACHE= (empty) to build the whole environment inside the clone's .venv instead.

PYTHON     ?= python3
VENV       := .venv
VENV_CACHE ?= $(HOME)/.cache/cellrcnn/venvs
# torch and torchvision are installed together as a matching pair from the registry.
TORCH_PAIR := torch==2.14.1 torchvision==0.29.2
ENV_KEY    := $(shell (cat setup.cfg; echo '$(TORCH_PAIR)') | sha256sum | cut -c1-16)
PY         := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test sample bench-step clean clean-cache

setup: $(VENV)/.clone-$(ENV_KEY)
	@# The package itself is installed editable into this clone's .venv only (cheap); the rest is cached.
	@# setuptools' note on editable installs (a UserWarning) is for package authors, not for a user setting up.
	@$(PY) -I -c "import importlib.util as u, pathlib, sys; s = u.find_spec('cellrcnn'); \
	sys.exit(0 if s and pathlib.Path(s.origin).resolve().parent == pathlib.Path('cellrcnn').resolve() else 1)" \
	2>/dev/null || PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q --no-deps --no-build-isolation -e .

# Two steps: the shared environment (torch and every dependency, never cellrcnn itself), then this clone's own
# small .venv, which sees the shared packages through a .pth file and holds the editable install of this clone.
# So two clones set up one after the other each import their own code, however their runs interleave.
$(VENV)/.clone-$(ENV_KEY):
	@set -e; \
	if [ -n "$(VENV_CACHE)" ] && mkdir -p "$(VENV_CACHE)" 2>/dev/null; then \
	  target="$(VENV_CACHE)/$(ENV_KEY)"; \
	else \
	  target="$(VENV)"; \
	fi; \
	if command -v flock >/dev/null; then exec 9>"$$target.lock"; flock 9; fi; \
	if [ ! -f "$$target/.ready-$(ENV_KEY)" ]; then \
	  echo "Creating the Python environment in $$target (torch is large: a few minutes the first time)"; \
	  rm -rf "$$target"; \
	  $(PYTHON) -m venv "$$target"; \
	  "$$target/bin/python" -m pip install -q --upgrade pip setuptools wheel; \
	  "$$target/bin/python" -m pip install -q $(TORCH_PAIR); \
	  "$$target/bin/python" -m pip install -q ".[test,napari,bioimageio,formats]"; \
	  "$$target/bin/python" -m pip uninstall -q -y cellrcnn; \
	  "$$target/bin/python" -c "import torchvision.ops; torchvision.ops.nms" ; \
	  touch "$$target/.ready-$(ENV_KEY)"; \
	fi; \
	if [ "$$target" != "$(VENV)" ]; then \
	  if "$$target/bin/python" -m pip show -q cellrcnn >/dev/null 2>&1; then \
	    echo "Removing a clone's cellrcnn from the shared environment $$target (each clone now has its own)"; \
	    "$$target/bin/python" -m pip uninstall -q -y cellrcnn; \
	  fi; \
	  rm -rf "$(VENV)"; \
	  "$$target/bin/python" -m venv --without-pip "$(VENV)"; \
	  shared=$$("$$target/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))"); \
	  own=$$("$(PY)" -c "import sysconfig; print(sysconfig.get_path('purelib'))"); \
	  echo "import site; site.addsitedir('$$shared')" > "$$own/zz_cellrcnn_shared_env.pth"; \
	  for script in "$$target"/bin/*; do \
	    name=$$(basename "$$script"); \
	    case "$$name" in python*|activate*|Activate*) continue;; esac; \
	    [ -f "$$script" ] || continue; \
	    [ -e "$(VENV)/bin/$$name" ] && continue; \
	    head -n 1 "$$script" | grep -q '^#!.*python' || continue; \
	    { echo "#!$(CURDIR)/$(VENV)/bin/python"; tail -n +2 "$$script"; } > "$(VENV)/bin/$$name"; \
	    chmod +x "$(VENV)/bin/$$name"; \
	  done; \
	fi; \
	touch "$(VENV)/.clone-$(ENV_KEY)"

demo: setup
	$(PY) scripts/demo.py data/sample --out runs/demo --overwrite

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

sample: setup
	$(PY) scripts/make_sample_data.py data/sample --overwrite

bench-step: setup
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache

clean-cache:
	rm -rf $(VENV_CACHE)
