# The campaign engine (and its Aculab simulator), as docker-compose.yml runs them:
#   docker build -t aculab-campaign .
#   docker run --rm -e CAMPAIGN_DATABASE__DSN=postgresql://... aculab-campaign campaign migrate
#
# Two stages: the first builds the wheel from the source, the second installs that
# wheel and nothing else of the source, as `pip install` of a release would. The
# migrations travel inside the wheel (campaign/migrations, read with importlib.resources).

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
# campaign/migrations is a symlink to ../migrations: both are needed to build.
COPY campaign ./campaign
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
# The last step fails the build if the installed package cannot find its migrations
# (run from /, away from any source).
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent campaign \
    && cd / && python -c "from campaign.db.migrate import load_migrations; assert load_migrations()"

WORKDIR /app
USER campaign
# 8080: the daemon's listener (final page, /healthz, /metrics); 8700: the simulator.
EXPOSE 8080 8700
CMD ["campaign", "run"]
