# Herald: one image for the API, the workers and migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY herald ./herald
COPY config ./config
COPY producer ./producer
COPY router ./router
COPY workers ./workers
COPY providers ./providers
COPY dlq ./dlq
COPY ratelimit ./ratelimit
RUN pip install . && useradd --system --uid 10001 herald
USER herald

EXPOSE 8000 9100
CMD ["herald", "api"]
