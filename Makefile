# poolside: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := run

# Every system package the build, the tests, `make run` and `make bench` need.
APT_PACKAGES := bazel-bootstrap pkg-config g++ git procps psmisc ca-certificates \
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto \
  libabsl-dev libpqxx-dev libpq-dev libgtest-dev libgmock-dev libbenchmark-dev \
  prometheus-cpp-dev postgresql postgresql-contrib postgresql-client pgbouncer \
  redis-server redis-tools python3 python3-grpcio python3-protobuf clang libclang-rt-14-dev

# The metrics endpoint serves HTTP with civetweb; tests render the status page
# in headless Chromium.
APT_PACKAGES += libcivetweb-dev chromium
# Security: libcrypto (token hashes), openssl (test certificates).
APT_PACKAGES += libssl-dev openssl
# TCMalloc for the services and load generators (common/server:malloc).
APT_PACKAGES += libgoogle-perftools-dev
# PostgreSQL's own parser (libpg_query) for statement analysis (common/sql).
APT_PACKAGES += libpg-query-dev
# The C++ formatting check in make test (tools/check_format.sh).
APT_PACKAGES += clang-format
# make bench: pgpool-II, the second cached-read baseline (its in-memory query cache).
APT_PACKAGES += pgpool2
# Replica routing tests: a 3-member Patroni cluster with etcd (v2 API) on loopback
# (tests/fixtures/patroni_cluster). Nothing starts them outside the tests.
APT_PACKAGES += patroni etcd-server
# Prometheus and promtool: the rules and dashboards are checked by a real
# Prometheus (k8s/observability, tests/prometheus_test).
APT_PACKAGES += prometheus
# HypoPG: hypothetical indexes, with which index advice costs its candidates
# (`poolside advise`; make run creates the extension in `demo`).
APT_PACKAGES += postgresql-15-hypopg

# Directories with a package.json whose node_modules the tests use (npm ci, offline
# lock files committed). Each test finds its node_modules next to its package.json.
NPM_DIRS := clients/node
# tests/reflection: grpc-reflection-js, a reflection client written elsewhere.
NPM_DIRS += tests/reflection

# k8s/tests render the manifests with `kubectl kustomize`: Debian's
# kubernetes-client (kubectl 1.20) unless a kubectl is already installed.
APT_PACKAGES += $(if $(shell command -v kubectl),,kubernetes-client)
NPM_DIRS += k8s/tests

BAZEL ?= bazel
RUN_DIR ?= $(CURDIR)/.run

.PHONY: deps build run test bench clean

# Installs what is missing: one dpkg query for every package; apt unpacks with
# dpkg's --force-unsafe-io (no fsync per file, half the time of a large
# install such as Chromium's; a crash mid-install may leave files to
# reinstall, as for any interrupted install); the npm directories side by side.
deps:
	@installed=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null | \
	  awk '/ install ok installed$$/ {print $$1}'); \
	missing=""; for p in $(APT_PACKAGES); do \
	  grep -qxF "$$p" <<<"$$installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    -o Dpkg::Options::=--force-unsafe-io $$missing; \
	fi
	@pids=""; for d in $(NPM_DIRS); do \
	  if [ ! -d $$d/node_modules ] || [ $$d/package-lock.json -nt $$d/node_modules ]; then \
	    echo "npm ci in $$d"; (cd $$d && npm ci --no-audit --no-fund --no-update-notifier --loglevel=error) & pids="$$pids $$!"; \
	  fi; \
	done; \
	for p in $$pids; do wait $$p || exit 1; done

build: deps
	$(BAZEL) build //...

# Embedded throwaway PostgreSQL (port 55432), the cache sidecar (50052), query
# (50051) and ingest (50053), supervised by tools/devstack: a service that
# exits is restarted with backoff while the others keep running; Ctrl-C stops all.
run: build
	bazel-bin/tools/devstack --run_dir=$(RUN_DIR)

test: deps
	tools/test.sh

bench: build
	bench/run.sh

clean:
	$(BAZEL) clean
	rm -rf $(RUN_DIR)
