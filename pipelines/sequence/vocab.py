"""The character vocabulary of a sequence model: ids, encoding, decoding, `vocab.json`.

Token ids: `PAD` = 0, `START` = 1, `END` = 2, then one id per character, in
sorted order, of the texts the vocabulary was built from (the training split).
A target sequence is the text's characters, `END`, then `PAD` up to
`max_length`; the decoder reads `[START] + targets[:-1]` (teacher forcing).

Example:
>>> vocab = CharVocabulary.from_texts(["4071", "12"])
>>> vocab.encode("12", max_length=5)
array([4, 5, 2, 0, 0], dtype=int32)
>>> vocab.decode([4, 5, 2, 0, 0])
'12'
"""

import dataclasses
import json

import numpy as np

PAD, START, END = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<start>", "<end>")
#: File the vocabulary is saved to, in the run folder and the export's assets.extra.
VOCAB_FILENAME = "vocab.json"


@dataclasses.dataclass(frozen=True)
class CharVocabulary:
    """Characters with ids `3, 4, ...`; ids 0-2 are padding, start and end.

    Args:
        characters: tuple of distinct one-character strings, in id order.

    Example:
    >>> CharVocabulary(("0", "1")).size
    5
    """

    characters: tuple

    def __post_init__(self):
        characters = tuple(self.characters)
        if not characters:
            raise ValueError("a character vocabulary needs at least one character")
        bad = [c for c in characters if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"vocabulary entries must be single characters; received {bad[:5]}")
        if len(set(characters)) != len(characters):
            raise ValueError(f"vocabulary characters repeat: {characters}")
        object.__setattr__(self, "characters", characters)
        object.__setattr__(self, "_ids", {c: i + len(SPECIAL_TOKENS)
                                          for i, c in enumerate(characters)})

    @classmethod
    def from_texts(cls, texts):
        """The sorted characters of `texts` (the training split's labels)."""
        return cls(tuple(sorted({c for text in texts for c in text})))

    @property
    def size(self):
        """Number of token ids, special tokens included."""
        return len(SPECIAL_TOKENS) + len(self.characters)

    def id_to_string(self):
        """Per id, the string it reads as: "" for the special tokens (serving's lookup table)."""
        return [""] * len(SPECIAL_TOKENS) + list(self.characters)

    def encode(self, text, max_length, where="text"):
        """int32 `(max_length,)`: the text's ids, `END`, then `PAD`.

        Args:
            text: str. Must be non-empty, of known characters, and leave room for `END`.
            max_length: int. Length of the target sequence.
            where: str. Names the text in error messages (file and line).

        Raises:
            ValueError: empty text, unknown character or text too long; the
                message names `where`, the text and what was expected.
        """
        if not text:
            raise ValueError(f"{where}: empty label; expected at least one character")
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown:
            raise ValueError(f"{where}: label {text!r} has characters {unknown} that are not in "
                             f"the training split's vocabulary {''.join(self.characters)!r}")
        if len(text) + 1 > max_length:
            raise ValueError(f"{where}: label {text!r} has {len(text)} characters; max_length="
                             f"{max_length} allows at most {max_length - 1} (plus the end token)")
        tokens = np.full(max_length, PAD, np.int32)
        tokens[:len(text)] = [self._ids[c] for c in text]
        tokens[len(text)] = END
        return tokens

    def encode_all(self, texts, max_length, names):
        """int32 `(N, max_length)` of `texts`; `names[i]` names text `i` in errors."""
        rows = [self.encode(text, max_length, name) for text, name in zip(texts, names)]
        return np.stack(rows) if rows else np.zeros((0, max_length), np.int32)

    def decode(self, tokens):
        """The text of one token row: characters up to the first `END` (specials dropped)."""
        strings = self.id_to_string()
        text = []
        for token in np.asarray(tokens).tolist():
            if token == END:
                break
            if 0 <= token < len(strings):
                text.append(strings[token])
        return "".join(text)

    def to_json(self):
        """The dict written to `vocab.json`."""
        return {"special_tokens": list(SPECIAL_TOKENS), "pad_id": PAD, "start_id": START,
                "end_id": END, "characters": list(self.characters)}

    def save(self, path):
        """Writes `vocab.json` to `path`; returns `path`."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        return path

    @classmethod
    def load(cls, path):
        """Reads a `vocab.json` written by `save`.

        Raises:
            ValueError: the file is not such a vocabulary (names the file).
        """
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
                characters = tuple(data["characters"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path} is not a keras-vit vocab.json: {error}") from None
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"{path}: special tokens {data.get('special_tokens')!r}; expected "
                             f"{list(SPECIAL_TOKENS)}")
        return cls(characters)
