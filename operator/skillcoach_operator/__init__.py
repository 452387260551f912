"""The kopf operator that tunes per-pod DB pool sizes (see docs/architecture.md)."""
