"""Ray Serve application and CLI for sana-serve."""
