# iopfd: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test lint typecheck bench clean systemd-analyze cc c c-build c-bench demo-c \
	accel test-accel

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m iopfd.demo

# The unit-file test needs systemd-analyze; fetch it where we can (root with apt),
# otherwise that one test says it is skipped and why.
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq >/dev/null 2>&1; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null 2>&1; }; } || \
	  echo "note: systemd-analyze unavailable; the unit-file test will be skipped"

test: $(STAMP) systemd-analyze c
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	@$(MAKE) --no-print-directory test-accel

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# With the mypyc build too (make accel), for the <entry>_mypyc figures of hwmodel and core.
bench: $(STAMP) accel
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(VMM_C)

# --- accelerated: hwmodel/ and iopfd/core/ compiled with mypyc (bench/accel.py) --------
# An overlay in build/accel, never .so files in the sources: the default stays pure
# Python, and a run is accelerated only with PYTHONPATH=build/accel (children inherit it).
# Without a C compiler (or Python's headers) nothing is built and the accelerated run
# says it is skipped.
ACCEL := $(CURDIR)/build/accel

accel: $(STAMP) cc
	$(BIN)/python -m bench.accel --if-stale

# The whole suite again, on the compiled modules (make test runs it after the pure run).
test-accel: $(STAMP) systemd-analyze c accel
	@if $(BIN)/python -m bench.accel --can-build >/dev/null; then \
	  PYTHONPATH=$(ACCEL) $(BIN)/python -c 'import hwmodel, sys; sys.exit(not hwmodel.COMPILED)' || \
	    { echo "error: $(ACCEL) is on PYTHONPATH but hwmodel is not compiled"; exit 1; }; \
	  echo "accelerated run: PYTHONPATH=$(ACCEL)"; \
	  PYTHONPATH=$(ACCEL) $(BIN)/python -m pytest -q; \
	else echo "note: no mypyc build (see make accel); the accelerated test run is skipped"; fi

# --- C: libiopf-preload.so, the C reference VMM, the C tests (clients/c, tests/c) ------
# gcc comes from apt where we can (root), as systemd-analyze does; without a compiler
# the C tests say they are skipped and why.
C_DIR := clients/c
C_BUILD := build/c
C_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -I$(C_DIR)/include
C_SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
C_LIB_SRC := $(wildcard $(C_DIR)/lib/*.c)
C_LIB_DEPS := $(C_LIB_SRC) $(wildcard $(C_DIR)/lib/*.h) $(wildcard $(C_DIR)/include/*.h)
PRELOAD := $(C_BUILD)/libiopf-preload.so
PRELOAD_ASAN := $(C_BUILD)/asan/libiopf-preload.so
VMM_C := $(C_DIR)/iopf-vmm-c
VMM_C_SRC := $(wildcard $(C_DIR)/vmm*.c)
CTEST := $(C_BUILD)/asan/iopf-ctest
CTEST_SRC := $(wildcard tests/c/*.c)
FAULTFD_BENCH := $(C_BUILD)/faultfd-bench

cc:
	@command -v $(CC) >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq >/dev/null 2>&1; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null 2>&1; }; } || \
	  echo "note: no C compiler ($(CC)); the C library, VMM and tests are not built"

# Builds what it can: nothing (and says so) where there is no compiler.
c: cc
	@if command -v $(CC) >/dev/null 2>&1; then $(MAKE) --no-print-directory c-build; fi

c-build: $(PRELOAD) $(VMM_C) $(CTEST) $(FAULTFD_BENCH)

# The fault-fd bench client alone (bench/faultfd.py builds it through this).
c-bench: $(FAULTFD_BENCH)

$(PRELOAD): $(C_LIB_DEPS)
	@mkdir -p $(@D)
	$(CC) $(C_CFLAGS) -fPIC -fvisibility=hidden -shared -o $@ $(C_LIB_SRC) -ldl -lpthread

$(PRELOAD_ASAN): $(C_LIB_DEPS)
	@mkdir -p $(@D)
	$(CC) $(C_CFLAGS) $(C_SANITIZE) -fPIC -fvisibility=hidden -shared -o $@ $(C_LIB_SRC) -ldl -lpthread

$(VMM_C): $(VMM_C_SRC) $(C_DIR)/vmm.h $(C_DIR)/include/iopf.h $(C_DIR)/include/iopf_uapi.h $(PRELOAD)
	$(CC) $(C_CFLAGS) -o $@ $(VMM_C_SRC) -L$(C_BUILD) -liopf-preload \
	  -Wl,-rpath,'$$ORIGIN/../../$(C_BUILD)' -lpthread -lm

# The C client of the fault-fd bench (bench/faultfd.py): the plain library, no
# sanitizers, so that it costs what a real VMM's fault loop costs.
$(FAULTFD_BENCH): bench/c/faultfd_bench.c $(C_DIR)/include/iopf.h $(C_DIR)/include/iopf_uapi.h $(PRELOAD)
	$(CC) $(C_CFLAGS) -o $@ $< -L$(C_BUILD) -liopf-preload -Wl,-rpath,'$$ORIGIN' -lpthread

# The tests link the sanitized library directly (libasan must load first, so it is
# not LD_PRELOADed); the VMM test in tests/c runs the plain one under LD_PRELOAD.
$(CTEST): $(CTEST_SRC) tests/c/ctest.h $(C_DIR)/lib/msgpack.c $(C_DIR)/lib/msgpack.h $(PRELOAD_ASAN)
	$(CC) $(C_CFLAGS) $(C_SANITIZE) -Itests/c -o $@ $(CTEST_SRC) $(C_DIR)/lib/msgpack.c \
	  -L$(C_BUILD)/asan -liopf-preload -Wl,-rpath,'$$ORIGIN' -lpthread

# make demo with the C reference VMM, under LD_PRELOAD.
demo-c: $(STAMP) c
	$(BIN)/python -m iopfd.demo --c-vmm $(VMM_C) --preload $(PRELOAD)
