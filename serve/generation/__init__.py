"""The generation service and the steps of one request, one module each: routing and capacity,
prompt safety, stage calls, image check and encoding, progress events, the result."""
