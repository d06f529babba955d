"""The stage deployments, one module each (text encoder, denoiser, decoder, prompt classifier,
image checker), the compute thread they run on and the payloads they exchange. Stages import
nothing from the gateway side (an import-linter contract in pyproject.toml)."""
