"""funnelcast features layer."""

from features.telemetry import keep_usage_data_local

keep_usage_data_local()  # before anything imports MLflow or BentoML
