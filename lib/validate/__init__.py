"""Validation: the sampler, rendering samples, the reel."""
