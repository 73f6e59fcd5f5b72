# The image of the compose `trainer` and `client` services: this package and its hash-locked runtime
# dependencies (requirements.lock: no test tools), run as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib

# uid and gid 10001, which docker-compose.yml also gives the tensorflow/serving container, so that the server
# reads every export the trainer writes. /models and /runs belong to this user so that a new named volume
# mounted there takes that owner and the trainer can write to it.
RUN groupadd --system --gid 10001 mtl \
    && useradd --system --uid 10001 --gid mtl --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mtl \
    && mkdir /models /runs \
    && chown mtl:mtl /models /runs

WORKDIR /app
# Dependencies first, from the lock alone, so that a change to the sources reuses this layer. Every file pip
# downloads must match a hash in the lock, and a dependency missing from the lock is an error.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY mtl mtl
COPY pipeline pipeline
COPY serving serving
# The package itself has no hash to check: --no-deps and --no-build-isolation make pip download nothing more
# (setuptools comes from the lock).
RUN pip install --no-deps --no-build-isolation --check-build-dependencies . \
    && rm -rf build ./*.egg-info

USER 10001:10001
