"""Learned dynamics models and imagined MDPs for MB-MPO (see issue: dynamics ensemble)."""
