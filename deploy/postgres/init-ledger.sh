#!/bin/bash
# PostgreSQL first start (mounted into /docker-entrypoint-initdb.d; the image runs it once, as the
# superuser, on an empty data directory). Safe to run again by hand (to rotate passwords):
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-ledger.sh
#
# Makes the ledger's owner role (gridwatch services; `gridwatch dispatch serve` migrates the schema
# with it) and a read-only role for Grafana, whose SELECT reaches every table the owner creates later.
#   LEDGER_DB (gridwatch)  LEDGER_USER (gridwatch)  LEDGER_PASSWORD
#   LEDGER_READER (grafana)  LEDGER_GRAFANA_PASSWORD
# Passwords reach psql through its environment (\getenv), never on a command line.
# In a subshell: the image's entrypoint sources (rather than executes) a script that is not
# executable, and neither `set -u` nor an `exit` here may leak into it.
(
set -euo pipefail
: "${LEDGER_PASSWORD:?LEDGER_PASSWORD is not set (see .env.example)}"
: "${LEDGER_GRAFANA_PASSWORD:?LEDGER_GRAFANA_PASSWORD is not set (see .env.example)}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v ledger_db="${LEDGER_DB:-gridwatch}" \
  -v ledger_user="${LEDGER_USER:-gridwatch}" \
  -v reader="${LEDGER_READER:-grafana}" <<'EOSQL'
\getenv ledger_pw LEDGER_PASSWORD
\getenv reader_pw LEDGER_GRAFANA_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'ledger_user')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'ledger_user') \gexec
ALTER ROLE :"ledger_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'ledger_pw';
SELECT format('CREATE ROLE %I LOGIN', :'reader')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'ledger_db', :'ledger_user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'ledger_db') \gexec
REVOKE ALL ON DATABASE :"ledger_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"ledger_db" TO :"reader";
\connect :"ledger_db"
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"ledger_user" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
EOSQL
echo "init-ledger: database ${LEDGER_DB:-gridwatch} owned by ${LEDGER_USER:-gridwatch}; read-only ${LEDGER_READER:-grafana}"
)
