"""funnelcast features layer."""
