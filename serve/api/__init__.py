"""The HTTP layer: thin routers per endpoint group over the generation service, built by a factory."""
