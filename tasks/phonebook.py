"""Phone-book lookup (Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State Space Models at
Copying", the phone-book task): a book of entries name -> number, then one name is asked for its number.

Names and numbers span several tokens, so the lookup is recall of a multi-token key followed by copying a
multi-token value; names share tokens (two people can share a first name), so the whole name must be matched.
The book fills the sequence, so at_length grows it: trained on short books, tested on long ones, a
fixed-size state has to hold ever more entries while attention only needs to find one.

    tokens    0 PAD, 1 COLON (name -> number), 2 NEWLINE (end of entry), 3 QUERY, 4..13 the digits 0..9,
              [14, 14 + name_vocab_size) name tokens
    entry     a1 .. a(name_len) COLON d1 .. d(number_len) NEWLINE          names distinct within a book
    inputs    PAD..  entry 1 .. entry E  QUERY a1 .. a(name_len) COLON d1 .. d(number_len - 1)
    targets   the queried number's digits at COLON and the number_len - 1 positions after it (teacher forcing)

E = (seq_len - query_len) // entry_len, entry_len = name_len + number_len + 2, query_len = name_len + number_len
+ 1; the rest is left padding. Worked example (seq_len=20, name_len=2, number_len=2, name tokens 14..17:
E = (20 - 5) // 6 = 2 entries, 3 PAD; entry 2 queried):

    inputs    0  0  0 14 15  1  5  9  2 15 15  1  7  4  2  3 15 15  1  7
    targets   .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  7  4      (. = -100: number 3 0)

Slice `depth`: the queried entry's place in the book, q * num_depth_buckets // E (0 = the first entry);
slice `num_entries` = E. Chance: 1/10 per digit (digits are independent and uniform).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive

PAD, COLON, NEWLINE, QUERY, DIGIT0 = 0, 1, 2, 3, 4
NAME0 = DIGIT0 + 10


@dataclass(frozen=True)
class PhoneBook(TaskConfig):
    """Jelassi et al.'s phone book: multi-token names to multi-token numbers; the book grows with length."""

    name: ClassVar[str] = "phonebook"
    chance: ClassVar[str] = "1/10 per digit (a uniform guess among the 10 digit tokens)"

    seq_len: int = 256
    vocab_size: int = 64
    #: tokens per name (a first and a last name by default)
    name_len: int = 2
    name_vocab_size: int = 32
    #: digits per number
    number_len: int = 4
    num_depth_buckets: int = 8

    def check(self) -> None:
        super().check()
        for field in ("name_len", "name_vocab_size", "number_len", "num_depth_buckets"):
            positive(self, field)
        at_least(self, "vocab_size", NAME0 + self.name_vocab_size,
                 f"(14 reserved tokens plus name_vocab_size={self.name_vocab_size})")
        query_len = self.name_len + self.number_len + 1
        at_least(self, "seq_len", query_len + self.entry_len,
                 f"(one entry of {self.entry_len} tokens and the query of {query_len})")
        names = self.name_vocab_size ** self.name_len
        if names >= 2**62:
            raise TaskConfigError(f"phonebook: name_len={self.name_len} with name_vocab_size={self.name_vocab_size} "
                                  "gives more names than int64 can number")
        if names < self.num_entries:
            raise TaskConfigError(
                f"phonebook: name_vocab_size={self.name_vocab_size} gives {names} names of {self.name_len} tokens, "
                f"too few for {self.num_entries} distinct entries at seq_len={self.seq_len}")

    @property
    def entry_len(self) -> int:
        return self.name_len + self.number_len + 2

    @property
    def num_entries(self) -> int:
        return (self.seq_len - self.name_len - self.number_len - 1) // self.entry_len

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L, E, A, D = self.seq_len, self.num_entries, self.name_len, self.number_len
        rows = torch.arange(n, device=device)
        names = rng.sample_without_replacement(n, E, 0, self.name_vocab_size ** A, seed, "phonebook/names", device)
        place = self.name_vocab_size ** torch.arange(A, device=device)
        name_tok = NAME0 + names[:, :, None] // place % self.name_vocab_size  # [n, E, A]
        digits = DIGIT0 + rng.randint(0, 10, seed, "phonebook/digits", rows[:, None, None],
                                      torch.arange(E, device=device)[None, :, None],
                                      torch.arange(D, device=device)[None, None, :])  # [n, E, D]
        book = torch.cat([name_tok, full((n, E, 1), COLON, device), digits, full((n, E, 1), NEWLINE, device)],
                         dim=2).reshape(n, E * self.entry_len)

        q = rng.randint(0, E, seed, "phonebook/query", rows)  # [n]
        asked = name_tok[rows, q]  # [n, A]
        number = digits[rows, q]  # [n, D]
        query = torch.cat([full((n, 1), QUERY, device), asked, full((n, 1), COLON, device), number[:, :-1]], dim=1)
        pad = L - book.shape[1] - query.shape[1]
        inputs = torch.cat([full((n, pad), PAD, device), book, query], dim=1)
        targets = full((n, L), IGNORE, device)
        targets[:, L - D:] = number
        return Examples(inputs, targets, {"depth": q * self.num_depth_buckets // E,
                                          "num_entries": full((n,), E, device)})


def full(shape: tuple[int, ...], token: int, device: torch.device) -> torch.Tensor:
    return torch.full(shape, token, dtype=torch.int64, device=device)
