"""Traces and logs of a replica: OpenTelemetry tracing configured from the standard OTEL_*
variables (tracing.py), and structured JSON logs with request and trace ids and redaction of
secrets (logs.py). Metrics stay with the code that updates them (prometheus_client)."""
