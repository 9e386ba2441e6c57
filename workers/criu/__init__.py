"""The one adapter that talks to CRIU, and the probe of what a node's CRIU and kernel can do."""
