"""Order probes: can the mixer tell *when* something happened, not only *whether* it did?

A mixer that sums its context without regard to position (a bag of tokens) solves recall but not these;
each probe asks for one kind of order information, answered at the end of the sequence.

    tokens    0 filler/padding, 1 QUERY (also the separator), 2 mark A, 3 mark B, [4, vocab_size) symbols

`first`: marks A and B at two positions in filler; the model must say which came first.

    inputs    filler.. X .. filler .. Y .. filler  QUERY        ({X, Y} = {A, B})
    targets   X at QUERY

    worked example (seq_len=8, constant filler; B at 1, A at 4, distance 3):
    inputs    0  3  0  0  2  0  0  1
    targets   .  .  .  .  .  .  .  3          (. = -100, not scored)

The distance d between the marks is uniform in [1, seq_len - 2] (then the first mark uniform where both fit),
so every distance bucket is equally populated; slice `distance` = (d - 1) * num_distance_buckets // (L - 2).
Chance 1/2.

`reverse`: a random string, QUERY, then the model says it backwards (teacher forcing, padding after).

    inputs    x1 .. xs  QUERY  xs .. x2  padding...
    targets   xs .. x1 at QUERY and the s-1 positions after it

    worked example (seq_len=8, string_len=3, symbols 4..):
    inputs    5  7  4  1  4  7  0  0
    targets   .  .  .  4  7  5  .  .

Slice `string_len`. Chance 1/alphabet_size per token.

`last_write`: the rest of the sequence is key-value writes (`k v` pairs); one key is rebound num_writes times,
each time to a different value, at random pairs, and every other pair writes some other key. At the end the
query names that key and the answer is its latest value: the earlier bindings are there to be confused with.

    keys [4, 4 + num_keys), values [4 + num_keys, 4 + num_keys + num_values); one padding token in front
    when seq_len is odd.
    inputs    k v  k v ... k v  QUERY k*
    targets   at k*: the value of the last pair that wrote k*

    worked example (seq_len=10, num_keys=2 = tokens 4 5, num_values=3 = tokens 6 7 8, num_writes=2;
    key 4 written 8 then 6, key 5 is the distractor):
    inputs    4  8  5  7  4  6  5  6  1  4
    targets   .  .  .  .  .  .  .  .  .  6

Slices `num_writes`, and `distance`: pairs written after the last write to k*, (P - 1 - g) *
num_distance_buckets // P for the last write in pair g of P. Chance 1/num_values (a model that recalls
k*'s values but not which was last scores 1/num_writes).

at_length keeps every field but seq_len: more filler (first), more padding (reverse), more distractor pairs
(last_write).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive

FILLER, QUERY, MARK_A, MARK_B, SYMBOL0 = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Order(TaskConfig):
    name: ClassVar[str] = "order"
    chance: ClassVar[str] = ("first: 1/2 (A or B); reverse: 1/alphabet_size per token; "
                             "last_write: 1/num_values (1/num_writes if the key's values are recalled unordered)")

    seq_len: int = 64
    vocab_size: int = 64
    probe: Literal["first", "reverse", "last_write"] = "first"
    #: first: "constant" filler is token 0; "random" draws it from the symbols [4, vocab_size)
    filler: Literal["constant", "random"] = "constant"
    #: first and last_write: buckets of the `distance` slice
    num_distance_buckets: int = 8
    #: reverse: length of the string and size of its alphabet
    string_len: int = 8
    alphabet_size: int = 16
    #: last_write: writes to the queried key, distinct keys, distinct values
    num_writes: int = 3
    num_keys: int = 8
    num_values: int = 16

    def check(self) -> None:
        super().check()
        if self.probe not in ("first", "reverse", "last_write"):
            raise TaskConfigError(f"order: probe={self.probe!r} must be 'first', 'reverse' or 'last_write'")
        if self.filler not in ("constant", "random"):
            raise TaskConfigError(f"order: filler={self.filler!r} must be 'constant' or 'random'")
        for field in ("num_distance_buckets", "string_len", "alphabet_size", "num_writes"):
            positive(self, field)
        at_least(self, "num_keys", 2, "(the queried key and at least one distractor key)")
        at_least(self, "num_values", 2)
        getattr(self, f"_check_{self.probe}")()

    def _check_first(self) -> None:
        at_least(self, "seq_len", 3, "(two marks and the query)")
        if self.filler == "random":
            at_least(self, "vocab_size", SYMBOL0 + 1, "(4 reserved tokens plus at least one filler symbol)")

    def _check_reverse(self) -> None:
        at_least(self, "vocab_size", SYMBOL0 + self.alphabet_size,
                 f"(4 reserved tokens plus alphabet_size={self.alphabet_size})")
        if self.seq_len < 2 * self.string_len:
            raise TaskConfigError(
                f"order: string_len={self.string_len} does not fit in seq_len={self.seq_len} "
                f"(the string and its reverse take 2*string_len tokens: string_len must be <= {self.seq_len // 2})")

    def _check_last_write(self) -> None:
        at_least(self, "vocab_size", SYMBOL0 + self.num_keys + self.num_values,
                 f"(4 reserved tokens plus num_keys={self.num_keys} plus num_values={self.num_values})")
        if self.num_values < self.num_writes:
            raise TaskConfigError(
                f"order: num_values={self.num_values} must be >= num_writes={self.num_writes} "
                f"(each write binds the key to a different value)")
        pairs = (self.seq_len - 2) // 2
        if pairs < self.num_writes:
            raise TaskConfigError(
                f"order: num_writes={self.num_writes} does not fit in seq_len={self.seq_len} "
                f"(each write is a 2-token pair before the 2-token query: num_writes must be <= {max(pairs, 0)})")

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        inputs, targets, slices = getattr(self, f"_{self.probe}")(n, seed, torch.arange(n, device=device))
        return Examples(inputs, targets, slices)

    def _first(self, n: int, seed: int, rows: torch.Tensor):
        L, device = self.seq_len, rows.device
        span = L - 2  # the marks sit in [0, L - 1), so their distance is in [1, L - 2]
        distance = rng.randint(1, span + 1, seed, "order/distance", rows)  # [n]
        first_at = rng.randbelow(L - 1 - distance, seed, "order/first_at", rows)  # [n], second fits before QUERY
        a_first = rng.randint(0, 2, seed, "order/a_first", rows) == 1
        first, second = torch.where(a_first, MARK_A, MARK_B), torch.where(a_first, MARK_B, MARK_A)

        if self.filler == "random":
            inputs = rng.randint(SYMBOL0, self.vocab_size, seed, "order/filler", rows[:, None],
                                 torch.arange(L, device=device)[None, :])
        else:
            inputs = torch.full((n, L), FILLER, dtype=torch.int64, device=device)
        inputs.scatter_(1, torch.stack([first_at, first_at + distance], 1), torch.stack([first, second], 1))
        inputs[:, -1] = QUERY
        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets[:, -1] = first
        return inputs, targets, {"distance": (distance - 1) * self.num_distance_buckets // span}

    def _reverse(self, n: int, seed: int, rows: torch.Tensor):
        L, s, device = self.seq_len, self.string_len, rows.device
        string = SYMBOL0 + rng.randint(0, self.alphabet_size, seed, "order/string", rows[:, None],
                                       torch.arange(s, device=device)[None, :])  # [n, s]
        backwards = string.flip(1)
        inputs = torch.full((n, L), FILLER, dtype=torch.int64, device=device)
        inputs[:, :s] = string
        inputs[:, s] = QUERY
        inputs[:, s + 1:2 * s] = backwards[:, :-1]  # teacher forcing
        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets[:, s:2 * s] = backwards
        return inputs, targets, {"string_len": torch.full((n,), s, dtype=torch.int64, device=device)}

    def _last_write(self, n: int, seed: int, rows: torch.Tensor):
        L, W, device = self.seq_len, self.num_writes, rows.device
        P = (L - 2) // 2  # write pairs; they end right before the QUERY k* pair
        slot = torch.arange(P, device=device)[None, :]  # [1, P]
        queried = rng.randint(0, self.num_keys, seed, "order/queried", rows)  # [n]
        # Distractor pairs write any key but the queried one: shift by 1 + uniform[0, num_keys - 1).
        other = rng.randint(1, self.num_keys, seed, "order/other_keys", rows[:, None], slot)  # [n, P]
        keys = (queried[:, None] + other) % self.num_keys
        values = rng.randint(0, self.num_values, seed, "order/values", rows[:, None], slot)  # [n, P]

        write_slots = rng.sample_without_replacement(n, W, 0, P, seed, "order/write_slots", device)
        write_slots = write_slots.sort(dim=1).values  # [n, W], in time order
        write_values = rng.sample_without_replacement(n, W, 0, self.num_values, seed, "order/write_values",
                                                      device)  # [n, W], distinct: every rebinding changes it
        keys.scatter_(1, write_slots, queried[:, None].expand(n, W))
        values.scatter_(1, write_slots, write_values)

        key_tok, value_tok = SYMBOL0 + keys, SYMBOL0 + self.num_keys + values
        pairs = torch.stack([key_tok, value_tok], dim=2).reshape(n, 2 * P)  # k v k v ...
        inputs = torch.full((n, L), FILLER, dtype=torch.int64, device=device)
        inputs[:, L - 2 - 2 * P:L - 2] = pairs
        inputs[:, -2] = QUERY
        inputs[:, -1] = SYMBOL0 + queried
        targets = torch.full((n, L), IGNORE, dtype=torch.int64, device=device)
        targets[:, -1] = SYMBOL0 + self.num_keys + write_values[:, -1]
        since_last = P - 1 - write_slots[:, -1]  # pairs written after the last write to k*
        return inputs, targets, {"num_writes": torch.full((n,), W, dtype=torch.int64, device=device),
                                 "distance": since_last * self.num_distance_buckets // P}
