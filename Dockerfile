# syntax=docker/dockerfile:1
# One image for every mallops Python service; compose picks the service by its command
# (`mallops serve <name>`, see mallops/services.py). Build: docker compose build (or docker build .).
#
# Debian 12 (bookworm) gives postgresql-client 15: pg_dump for backup_database, matching the
# postgres:15 server of compose.yaml (pg_dump's major version must be >= the server's).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: a virtualenv with mallops and its dependencies ------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the source (a regular, non-editable install into the venv).
COPY README.md ./
COPY shared ./shared
COPY services ./services
COPY mallops ./mallops
RUN pip install --no-cache-dir --no-deps .

# -- runtime: the venv on a slim base, no compilers, a non-root user ------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# pg_dump for backups on PostgreSQL; nothing else from apt
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mallops \
    && useradd --system --uid 10001 --gid mallops --home-dir /app --no-create-home --shell /usr/sbin/nologin mallops \
    && mkdir -p /app /data \
    && chown mallops:mallops /app /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOPS_DATA_DIR=/data
WORKDIR /app
USER 10001:10001
# gateway, monitor
EXPOSE 8000 9808
CMD ["mallops", "--help"]
