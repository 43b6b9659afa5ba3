"""funnelcast training layer."""
