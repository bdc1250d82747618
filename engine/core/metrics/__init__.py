"""Figures on arrays: classification, weak localisation, mask quality, and their plain-words notes."""
