"""Deterministic fake embeddings: texts that share words and character trigrams get similar vectors."""

from __future__ import annotations

import hashlib
import math
import re

EMBEDDING_DIMENSIONS = 1536


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    index = int.from_bytes(digest[:4], "big") % dimensions
    sign = 1.0 if digest[4] & 1 else -1.0
    return index, sign


def fake_embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A unit vector built from the text's words (weight 1) and character trigrams (weight 0.3)."""
    vector = [0.0] * dimensions
    lowered = text.lower()
    for word in re.findall(r"[a-z0-9.]+", lowered):
        index, sign = _bucket("w:" + word, dimensions)
        vector[index] += sign
    padded = f"  {lowered}  "
    for start in range(len(padded) - 2):
        index, sign = _bucket("t:" + padded[start : start + 3], dimensions)
        vector[index] += 0.3 * sign
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
