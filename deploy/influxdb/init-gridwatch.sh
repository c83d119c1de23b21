#!/bin/bash
# InfluxDB 2.x first start (mounted into /docker-entrypoint-initdb.d): runs once, right after the
# image's own `influx setup` created the org, the bucket and the admin token from the
# DOCKER_INFLUXDB_INIT_* variables, with the influx CLI already logged in as that admin.
# In a subshell: the image's entrypoint sources (rather than executes) a script that is not
# executable, and neither `set -u` nor an `exit` here may leak into it.
(
set -euo pipefail
: "${INFLUX_GRAFANA_USER:?INFLUX_GRAFANA_USER is not set (see .env.example)}"
: "${INFLUX_GRAFANA_PASSWORD:?INFLUX_GRAFANA_PASSWORD is not set (see .env.example)}"

# InfluxQL (the wall screens' language) addresses data as database/retention policy: map the
# bucket to database "<bucket>", retention policy "autogen", as the default for that database.
influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${DOCKER_INFLUXDB_INIT_BUCKET}" \
  --rp autogen \
  --default

# Grafana reads through the v1 API as a user that can only read this bucket (the gridwatch
# services write with the token). The influx CLI takes the password only as an argument: this
# runs once, inside the container, before any other process exists there.
influx v1 auth create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --username "${INFLUX_GRAFANA_USER}" \
  --password "${INFLUX_GRAFANA_PASSWORD}" \
  --read-bucket "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --description "grafana: InfluxQL, read only"

echo "init-gridwatch: DBRP ${DOCKER_INFLUXDB_INIT_BUCKET}/autogen -> bucket ${DOCKER_INFLUXDB_INIT_BUCKET}; v1 reader ${INFLUX_GRAFANA_USER}"
)
