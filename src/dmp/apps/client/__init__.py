"""The dnsmesh client: configuration, local state, use cases and the CLI."""
