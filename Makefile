# closewait-lab: the front door. `make help` lists the targets.
SHELL := bash
CARGO ?= cargo
# The release binary is linked statically where the C library's static archive is installed
# (libc6-dev has it): a static cwlab starts about half a millisecond sooner, a sixth of what
# `cwlab sockets --count` takes at 10,000 sockets (docs/PERFORMANCE.md). Built for the host's triple
# explicitly, so the flag reaches the binary and not the build scripts or proc-macros.
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
STATIC := $(if $(shell cc -print-file-name=libc.a 2>/dev/null | grep /),-C target-feature=+crt-static)
RELEASE_ENV := RUSTFLAGS="$(strip $(RUSTFLAGS) $(STATIC))"
CWLAB := target/$(HOST)/release/cwlab
SCENARIOS := $(sort $(basename $(notdir $(wildcard scenarios/*.toml))))

PREFIX ?= /usr/local

.PHONY: help build install fmt fmt-check lint test doc bench soak scenarios list demo charts clean $(addprefix scenario-,$(SCENARIOS))

help:
	@echo "make scenario-leak       the leak: CLOSE-WAIT piles up, held by the acceptor"
	@echo "make scenario-fixed      shutdown() before close(): no CLOSE-WAIT, the fd leak stays"
	@echo "make scenario-NAME       any scenario in scenarios/ ($(SCENARIOS))"
	@echo "make scenarios           every scenario, then N passed, N failed; fails if any fails"
	@echo "make install             cwlab to $(PREFIX)/bin (PREFIX=~/.local for ~/.local/bin)"
	@echo "make test                unit and end-to-end tests (root: private network namespaces)"
	@echo "make demo                leak and fixed side by side, live, at a room's pace (q quits, space pauses, r reruns)"
	@echo "make charts              docs/charts/: timelines, ladders, state machines, an HTML page"
	@echo "make soak                every scenario 50x, 8 at once, 50x with both cores busy; check's table 3x busy"
	@echo "make fmt | lint | doc | bench | list"

build:
	$(RELEASE_ENV) $(CARGO) build --release --quiet --target $(HOST) -p cwlab

install: build
	install -D -m 755 $(CWLAB) $(DESTDIR)$(PREFIX)/bin/cwlab

$(addprefix scenario-,$(SCENARIOS)): scenario-%: build
	$(CWLAB) run scenarios/$*.toml

scenarios: build
	$(CWLAB) run $(addprefix scenarios/,$(addsuffix .toml,$(SCENARIOS)))

list: build
	$(CWLAB) list

# The live side-by-side view for a workshop, connect and close each spread over 3 s
# (`cwlab demo --speed 2` twice as fast; q quits, space pauses, r reruns).
demo: build
	$(CWLAB) demo

# The pictures of docs/workshop.md and the README: leak, fixed and parent-closes on one scale,
# the ladder and the state machine of each, and one HTML page with all three.
CHART_SCENARIOS := leak fixed parent-closes
charts: build
	@mkdir -p docs/charts
	$(CWLAB) run $(addprefix scenarios/,$(addsuffix .toml,$(CHART_SCENARIOS))) \
		--report target/charts --svg docs/charts/leak-fixed-parent-closes.svg \
		--html docs/charts/leak-fixed-parent-closes.html > /dev/null
	for s in $(CHART_SCENARIOS); do \
		$(CWLAB) chart target/charts/$$s.json --ladder-svg docs/charts/ladder-$$s.svg \
			--diagram docs/charts/machine-$$s.svg || exit; \
	done

# The last line sums every test binary's results, so the verdict is one line, whichever crate ran last.
test:
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' target/test.log

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: fmt-check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings -D clippy::undocumented_unsafe_blocks

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

bench: build
	$(RELEASE_ENV) $(CARGO) bench --target $(HOST) -p cwlab --bench sockets
	$(RELEASE_ENV) $(CARGO) bench --target $(HOST) -p cwlab --bench watch

# Every scenario 50 times in a row, 8 at once, then 50 in a row with both cores busy (about 7 min).
soak: build
	CWLAB=$(CWLAB) scripts/soak.sh

clean:
	$(CARGO) clean
	rm -rf reports
