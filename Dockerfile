# promptserve: one frozen ViT serving many prompt-set tasks.
#   docker build -t promptserve .
#   docker run -p 127.0.0.1:8000:8000 -e PROMPTSERVE_ADMIN_TOKEN=... -v promptserve-registry:/data promptserve
# Smaller CPU-only image: --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index>.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, from pyproject.toml alone (plus EXTRAS: redis for docker-compose's shared registry):
# this layer is rebuilt when the dependencies change, not when the source does.
ARG EXTRAS="redis"
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in sys.argv[1].split(',') if e for d in p['optional-dependencies'][e]]))" \
        "$EXTRAS" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
# Then the project itself, without dependencies: its packages and assets/ (the wheel ships the demo backbone and
# demo tasks as package data, so `promptserve serve` finds them from any directory); tests, data and runs stay
# out (.dockerignore).
COPY setup.py README.md ./
COPY assets/ assets/
COPY promptserve/ promptserve/
COPY promptserve_cli/ promptserve_cli/
COPY kernels/ kernels/
COPY prompt_store/ prompt_store/
COPY server/ server/
COPY training/ training/
RUN pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PROMPTSERVE_HOST=0.0.0.0 \
    PROMPTSERVE_PORT=8000 \
    PROMPTSERVE_STORE=/data/registry
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin promptserve \
    && mkdir -p /data/registry \
    && chown -R 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "server.healthcheck"]
CMD ["promptserve", "serve"]
