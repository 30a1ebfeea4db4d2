"""Outputs: config.json, the loss curve, billing, uploading to output_url."""
