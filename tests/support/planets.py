"""The sentence-transformers documentation's planet example: one query, four documents, Mars the answer."""

from __future__ import annotations

QUERY = "Which planet is known as the Red Planet?"
PLANETS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]
MARS = PLANETS[1]
#: all-MiniLM-L6-v2 cosines of QUERY against PLANETS as sentence-transformers computes them (±0.002).
MINILM_REFERENCE_COSINES = [0.4637, 0.8121, 0.7283, 0.7505]
