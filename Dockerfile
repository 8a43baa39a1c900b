# The campaign engine (and its Aculab simulator), as docker-compose.yml runs them:
#   docker build -t aculab-campaign .
#   docker run --rm -e CAMPAIGN_DATABASE__DSN=postgresql://... aculab-campaign campaign migrate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY campaign ./campaign
COPY migrations ./migrations

# Editable, from /app: `campaign migrate` reads the SQL files from the
# migrations/ directory beside the package (campaign/db/migrate.py,
# MIGRATIONS_DIR = <package>/../migrations), here /app/migrations. A regular
# install would look for site-packages/../migrations, which does not exist.
# The last step fails the build if the migrations cannot be found.
RUN pip install -e . \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent campaign \
    && python -c "from campaign.db.migrate import load_migrations; assert load_migrations()"

USER campaign
# 8080: the daemon's listener (final page, /healthz, /metrics); 8700: the simulator.
EXPOSE 8080 8700
CMD ["campaign", "run"]
