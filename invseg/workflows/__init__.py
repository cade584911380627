"""Workflows: train, predict, evaluate, bench, demo — plain functions the CLI calls."""
