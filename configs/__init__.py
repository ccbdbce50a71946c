"""Shipped YAML configs (protocols/, train/, ci/): package data, read via benchmark.resources."""
