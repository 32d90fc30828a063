# Tapkey lock-inventory exporter: `exporter serve` in a container.
#
#   docker build -t tapkey-inventory-exporter:0.1.0 .
#   docker run --rm -e EXPORTER_TAPKEY__CLIENT_ID=... \
#     -e EXPORTER_TAPKEY__CLIENT_SECRET_FILE=/run/secrets/tapkey_client_secret \
#     -v "$PWD/client_secret:/run/secrets/tapkey_client_secret:ro" \
#     -e EXPORTER_DATABASE__URL=postgresql://exporter@db/tapkey \
#     tapkey-inventory-exporter:0.1.0
#
# Configuration comes from EXPORTER_<SECTION>__<KEY> variables or a mounted config file
# (`serve --config /etc/tapkey-exporter/config.toml`); secrets from mounted files, never arguments.
# Without a database URL the data goes to SQLite in /data (a volume). `docker stop` waits only
# 10 s by default: use `docker stop -t 40` to give a run its 30 s shutdown_timeout.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[postgres,mysql]" && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home exporter
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# /healthz and /metrics, when enabled: EXPORTER_HTTP__ENABLED=true EXPORTER_HTTP__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["exporter"]
CMD ["serve"]
