"""funnelcast serving layer."""
