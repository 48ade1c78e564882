"""Scores of generated text: exact-sequence accuracy and character error rate.

Example:
>>> character_error_rate(["4071"], ["471"])
0.25
>>> exact_match_accuracy(["4071", "12"], ["4071", "13"])
0.5
"""

import numpy as np


def edit_distance(reference, hypothesis):
    """Levenshtein distance (insertions, deletions, substitutions each cost 1).

    Example:
    >>> edit_distance("kitten", "sitting")
    3
    """
    previous = list(range(len(hypothesis) + 1))
    for i, ref_char in enumerate(reference, start=1):
        current = [i]
        for j, hyp_char in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ref_char != hyp_char)))
        previous = current
    return previous[-1]


def character_error_rate(references, hypotheses):
    """Summed edit distances over summed reference lengths (the corpus CER).

    Args:
        references: the true texts.
        hypotheses: the generated texts, same order.

    Returns:
        float >= 0 (can exceed 1 when hypotheses are much longer).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    characters = sum(len(text) for text in references)
    errors = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
    return float(errors / max(characters, 1))


def exact_match_accuracy(references, hypotheses):
    """Share of hypotheses equal to their reference, character for character."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return float(np.mean([r == h for r, h in zip(references, hypotheses)])) if references \
        else 0.0
