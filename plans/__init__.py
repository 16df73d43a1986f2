"""Bluesky plans (typed generator functions) for the three strainstream experiments."""
