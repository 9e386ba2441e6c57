"""Node to node: the transfer service, its wire format, tokens, delta blocks and the pages stream."""
