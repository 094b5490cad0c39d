# syntax=docker/dockerfile:1
# calico-crd-hook image: the program in a virtual environment, non-root, optionally with Calico
# manifests baked in for air-gapped clusters:
#   docker build --build-arg CALICO_VERSIONS=v3.29.1,v3.30.7 -t calico-crd-hook:0.1.0 .
# Refresh the base image digest with your registry tooling when you rebuild.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm@sha256:782412e85d0f0984994c290652577d4018aff08145c85b262bb63dc0c7522254

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md image-requirements.lock ./
COPY hook ./hook
# Exactly the locked dependencies, each checked against its hash (image-requirements.lock, made from
# pyproject.toml: CONTRIBUTING.md); the program itself brings no others. pip compiles every module to
# bytecode as it installs, and the image keeps it: the interpreter loads it at start.
RUN python -m venv /opt/calico-crd-hook/venv \
    && /opt/calico-crd-hook/venv/bin/pip install --require-hashes --no-deps -r image-requirements.lock \
    && /opt/calico-crd-hook/venv/bin/pip install --no-deps . \
    && /opt/calico-crd-hook/venv/bin/pip uninstall --yes pip
# Comma-separated Calico versions to bake in; each is downloaded and checked against its
# shipped sha256 by the program's own `bundle` subcommand. An internal mirror: its URL template
# ({version}, {file}) and, when its CA is private, the path of that CA file (bind it with -v).
ARG CALICO_VERSIONS=""
ARG CALICO_URL_TEMPLATE=""
ARG CALICO_CA_BUNDLE=""
RUN mkdir -p /opt/calico-crd-hook/bundle \
    && IFS=',' \
    && for version in ${CALICO_VERSIONS}; do \
         CALICO_CRD_HOOK_URL_TEMPLATE="${CALICO_URL_TEMPLATE}" CALICO_CRD_HOOK_CA_BUNDLE="${CALICO_CA_BUNDLE}" \
         /opt/calico-crd-hook/venv/bin/calico-crd-hook bundle --version "${version}" --out /opt/calico-crd-hook/bundle \
         || exit 1; \
       done

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="calico-crd-hook" \
      org.opencontainers.image.description="Helm pre-upgrade hook: brings Calico CRDs and Tiers to the target version" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/calico-crd-hook/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/calico-crd-hook /opt/calico-crd-hook
USER 65532:65532
ENTRYPOINT ["calico-crd-hook"]
CMD ["apply"]
