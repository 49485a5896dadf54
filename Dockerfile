# certsync operator image: the package in a virtual environment on a slim Python, run as non-root.
# BASE is the official slim Python image; pin it by digest where you build, for example
#   --build-arg BASE=docker.io/library/python:3.11-slim-bookworm@sha256:<digest your registry serves>
# hack/image builds it here on a Debian bookworm base made with mmdebstrap (python3, python3-venv).
# Neither tests nor the emulators nor devkit/ go in: .dockerignore lets in pyproject.toml, README.md, LICENSE,
# operator/.
# VERSION and COMMIT label the image (hack/image passes pyproject.toml's version and `git rev-parse HEAD`); they are
# declared in the final stage only, so that a new commit rebuilds no layer of the build stage.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
# Where the build may reach the package index only through a TLS-inspecting proxy, pass its CA bundle
# (hack/image mounts the host's and sets this); unset, pip uses its own trust store.
ARG PIP_CERT
RUN python3 -m venv /opt/certsync
# Every dependency pinned with its hashes (requirements.lock, made by hack/lock): pip in hash-checking mode refuses
# anything else, so a build never takes whatever is newest that day. First, so a code change reuses this layer.
COPY requirements.lock /src/
RUN /opt/certsync/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /src/requirements.lock
COPY pyproject.toml README.md LICENSE /src/
COPY operator /src/operator
# Neither pip nor setuptools (which the venv of Python 3.11 brings, and nothing imports) is needed at run time, nor
# the asyncio copy of the Kubernetes client (~70 MB with its bytecode), which neither certsync nor kopf imports.
# The SBOM (hack/release) lists what stays.
RUN /opt/certsync/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /src \
 && /opt/certsync/bin/pip uninstall --yes setuptools pip \
 && rm -rf /opt/certsync/lib/python3*/site-packages/kubernetes/aio

FROM ${BASE}
# A fixed non-root uid with a passwd entry (some libraries ask for the user's name), no home, no shell.
RUN echo 'certsync:x:65532:65532:certsync:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'certsync:x:65532:' >> /etc/group
COPY --from=build /opt/certsync /opt/certsync
ENV PATH=/opt/certsync/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CERTSYNC_LOG_FORMAT=json
USER 65532:65532
ARG VERSION=unknown
ARG COMMIT=unknown
ARG SOURCE=""
# `certsync version` reports the commit from here; the version comes from the installed package's metadata.
ENV CERTSYNC_BUILD_COMMIT=$COMMIT
LABEL org.opencontainers.image.title="certsync" \
      org.opencontainers.image.description="Kubernetes operator that keeps TLS certificates in Secrets in sync with EMQX Cloud and the CDN SSL API" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$COMMIT" \
      org.opencontainers.image.source="$SOURCE" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 8080
ENTRYPOINT ["certsync"]
CMD ["run"]
