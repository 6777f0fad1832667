# ringcast: the two commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
VENV := target/venv
PY := $(VENV)/bin/python
# Both reactor backends are tested, always.
BACKENDS ?= io-uring epoll

.PHONY: run test deps lint fuzz-check unit pytest browser bench perf fuzz install clean

run:
	$(CARGO) run --release --bin ringcast -- $(ARGS)

deps:
	./scripts/install-test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# Library users may leave out cluster mode (Redis, tokio).
	$(CARGO) clippy -p ringcast --no-default-features --all-targets -- -D warnings

# fuzz/ is its own cargo project, outside the workspace: check that its
# targets still build against the codec so they cannot rot between
# `make fuzz` runs. Plain stable `cargo check` is enough for that.
fuzz-check:
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	RUSTFLAGS="-D warnings" $(CARGO) check --manifest-path fuzz/Cargo.toml --bins

unit:
	$(CARGO) test --workspace
	$(CARGO) test -p ringcast --no-default-features --lib --test api

# Server-level tests drive a real `ringcast` process with real clients.
pytest: deps
	$(CARGO) build --bin ringcast
	RINGCAST_BIN=$(CURDIR)/target/debug/ringcast RINGCAST_BACKENDS="$(BACKENDS)" \
		$(PY) -m pytest -q tests/server

browser: deps
	@if [ -f tests/browser/package.json ]; then \
		$(CARGO) build --bin ringcast && \
		RINGCAST_BIN=$(CURDIR)/target/debug/ringcast node --test tests/browser/; \
	fi

test: deps lint fuzz-check unit pytest browser

bench:
	./scripts/bench.sh

perf:
	./scripts/perf.sh

# Each fuzz target runs for FUZZ_SECONDS (default 60).
FUZZ_SECONDS ?= 60
fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

install:
	$(CARGO) build --release --bin ringcast
	install -Dm755 target/release/ringcast $(DESTDIR)$(PREFIX)/bin/ringcast
	install -Dm644 dist/ringcast.service $(DESTDIR)$(PREFIX)/lib/systemd/system/ringcast.service
	install -Dm644 dist/ringcast.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/ringcast.socket
	install -Dm644 dist/ringcast.toml $(DESTDIR)$(PREFIX)/share/doc/ringcast/ringcast.toml.example

clean:
	$(CARGO) clean
