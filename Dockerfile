# certsync operator image: the package in a virtual environment on a slim Python, run as non-root.
# BASE is the official slim Python image; pin it by digest where you build, for example
#   --build-arg BASE=docker.io/library/python:3.11-slim-bookworm@sha256:<digest your registry serves>
# hack/image builds it here on a Debian bookworm base made with mmdebstrap (python3, python3-venv).
# Neither tests nor the emulators nor devkit/ go in: .dockerignore lets in pyproject.toml, README.md, operator/.
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
# Where the build may reach the package index only through a TLS-inspecting proxy, pass its CA bundle
# (hack/image mounts the host's and sets this); unset, pip uses its own trust store.
ARG PIP_CERT
RUN python3 -m venv /opt/certsync
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# pip is not needed at run time, nor the asyncio copy of the Kubernetes client (~70 MB with its bytecode),
# which neither certsync nor kopf imports.
RUN /opt/certsync/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/certsync/bin/pip uninstall --yes pip \
 && rm -rf /opt/certsync/lib/python3*/site-packages/kubernetes/aio

FROM ${BASE}
# A fixed non-root uid with a passwd entry (some libraries ask for the user's name), no home, no shell.
RUN echo 'certsync:x:65532:65532:certsync:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'certsync:x:65532:' >> /etc/group
COPY --from=build /opt/certsync /opt/certsync
ENV PATH=/opt/certsync/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CERTSYNC_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["certsync"]
CMD ["run"]
