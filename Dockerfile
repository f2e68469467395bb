# The consul-reconciler controller as a container image.
#
#   docker build -t consul-reconciler .
#   docker run -d --name consul-reconciler --restart always --network host \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /etc/consul-reconciler/topology.yaml:/etc/consul-reconciler/topology.yaml:ro \
#     -v consul-reconciler-state:/var/lib/consul-reconciler \
#     consul-reconciler
#
# BASE is any Debian-like image with Python 3.11+ and the venv module. The default is the official
# slim image; where no registry is reachable, build from a local one (the tests make
# consul-reconciler-test/python-base:bookworm with debootstrap, see testbed/baseimage.py):
#   docker build --build-arg BASE=consul-reconciler-test/python-base:bookworm --network host .
ARG BASE=python:3.11-slim

# --- build: install the package into a self-contained venv --------------------------------------
FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Only what the package needs (see .dockerignore): no tests, examples, benchmarks or .git.
COPY pyproject.toml README.md constraints.txt /src/
COPY desired_state/ /src/desired_state/
COPY reconciler/ /src/reconciler/
# pip and setuptools are needed only to install; removing them from the venv saves about 20 MB.
# The last two commands fail the build if the package or one of its dependencies cannot be loaded.
RUN python3 -m venv /opt/consul-reconciler \
 && /opt/consul-reconciler/bin/pip install --no-cache-dir -c /src/constraints.txt /src \
 && /opt/consul-reconciler/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && /opt/consul-reconciler/bin/consul-reconciler --help >/dev/null \
 && /opt/consul-reconciler/bin/python -c "import reconciler.cli, reconciler.store, apscheduler, prometheus_client"

# --- runtime: the venv alone on the same base (no /src, no build leftovers) --------------------
FROM ${BASE}
LABEL org.opencontainers.image.title="consul-reconciler" \
      org.opencontainers.image.description="Keeps Consul servers, clients and Registrator converged on plain Docker hosts" \
      org.opencontainers.image.licenses="Apache-2.0"

# The controller runs as an unprivileged user, reconciler (uid/gid 10001), not root.
#
# Trade-off: the controller drives Docker through the engine's socket, mounted from the management
# host (-v /var/run/docker.sock:/var/run/docker.sock). That socket is usually root:docker mode
# 0660, so uid 10001 cannot open it by itself. Either
#   * give the user the socket's group:  docker run --group-add "$(stat -c %g /var/run/docker.sock)"
#     (the gid differs between hosts, so it is looked up where the container is started), or
#   * where that is not possible (a root:root 0600 socket, a platform that cannot add groups), run
#     as root:  docker run --user 0
# Either way, access to the Docker socket is root-equivalent on that host (anyone who can talk to
# the engine can start a privileged container that mounts /). The non-root user only limits what a
# compromised controller process can do inside its own container (its files, its venv), not what
# it can do to the host through the socket. Hosts reached over tcp+TLS or ssh need no socket mount.
RUN groupadd --gid 10001 reconciler \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/consul-reconciler \
      --no-create-home --shell /usr/sbin/nologin reconciler \
 && mkdir -p /var/lib/consul-reconciler /etc/consul-reconciler \
 && chown 10001:10001 /var/lib/consul-reconciler \
 && chmod 0750 /var/lib/consul-reconciler

COPY --from=build /opt/consul-reconciler /opt/consul-reconciler

# HOME is the state folder whatever the user (uid 10001, or --user 0): hosts reached over ssh:// are
# trusted through $HOME/.ssh/known_hosts and logged in to with $HOME/.ssh/id_ed25519 (or id_ecdsa,
# id_rsa, or an IdentityFile of $HOME/.ssh/config), i.e. /var/lib/consul-reconciler/.ssh: mount a
# folder there read-only (-v /etc/consul-reconciler/ssh:/var/lib/consul-reconciler/.ssh:ro).
ENV HOME=/var/lib/consul-reconciler \
    PATH=/opt/consul-reconciler/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONSUL_RECONCILER_DB=/var/lib/consul-reconciler/audit.db

# The audit log (SQLite) outlives the container: keep it on a named volume or a host folder
# (owned by uid 10001 when bind-mounted and the container runs as that user).
VOLUME ["/var/lib/consul-reconciler"]

# /healthz, /readyz and /metrics of `consul-reconciler run` (default --http 127.0.0.1:9321; with
# --network host that is the host's loopback). To scrape /metrics from elsewhere, or with a bridge
# network and -p 9321:9321, pass --http 0.0.0.0:9321 (or a host address) after the topology.
EXPOSE 9321

# Slim images have no curl or wget: ask Python. Any error (refused, timeout, HTTP >= 400) exits 1.
# The check runs inside the container and looks at 127.0.0.1:9321, which any --http address on
# that port (127.0.0.1 or 0.0.0.0) serves; with another port, override it (docker run
# --health-cmd ...). One-shot commands (apply, plan) exit long before the first check counts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9321/healthz', timeout=3)"]

# Numeric, so that platforms can tell it is not root without reading /etc/passwd (Kubernetes'
# runAsNonRoot); inside the container the name is reconciler.
USER 10001:10001
WORKDIR /var/lib/consul-reconciler
ENTRYPOINT ["consul-reconciler"]
CMD ["run", "/etc/consul-reconciler/topology.yaml"]
