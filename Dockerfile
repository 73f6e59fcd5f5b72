# The image of the compose `trainer` and `client` services: this package and its pinned dependencies.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY mtl mtl
COPY pipeline pipeline
COPY serving serving
RUN pip install --no-cache-dir -c requirements.lock .
ENV TF_CPP_MIN_LOG_LEVEL=2
