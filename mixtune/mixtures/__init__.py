"""Mixtures: the YAML spec, sampling rates, the position -> example sampler, and `build`."""
