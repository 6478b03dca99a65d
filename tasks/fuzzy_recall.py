"""MAD's fuzzy in-context recall (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"):
in-context recall whose keys and values span several adjacent tokens, in the layout of MAD's generator.

Keys are 1..k_motif_size distinct key tokens and values 1..v_motif_size distinct value tokens, in order; nothing
marks where a key ends except the first value token, so the model must group adjacent tokens into units before
it can bind them. A key (its tokens and their number) keeps one value per example; every recurrence of a key
is a query (multi_query, MAD's benchmark setting), and the last pair always repeats a key seen earlier.

    vocab     ns = vocab_size - 1 (- 1 more without multi_query); keys [0, ns//2), values [ns//2, ns),
              PAD = ns (left padding), the copy prefix vocab_size - 1 before the probe (single query)
    inputs    PAD..  k..k v..v  k..k v..v  ...  [COPY]  k*..k* v*..v*     (the last token falls off)
    targets   a recurring key's value, one token per position from its last key token on (teacher forcing:
              the model sees the value tokens it already said), -100 elsewhere

Worked example (vocab_size=9, seq_len=14, k_motif_size=2, v_motif_size=2: keys 0..3, values 4..7, PAD 8;
body pairs (0)->(6 4), (1 0)->(4 5), (2)->(5 7), then the probe (1 0)->(4 5)):

    inputs    8  0  6  4  1  0  4  5  2  5  7  1  0  4
    targets   .  .  .  .  .  .  .  .  .  .  .  .  4  5      (. = -100; the probe's last value token falls off)

Reading left to right, a key token cannot tell whether the key ends there or goes on ((1) or (1 0)), so the
first value token is due at a position the model can only guess from the keys it has seen: MAD's task has
this ambiguity, and so does this one.

Body pairs are drawn until the next one would not fit before room for the longest probe; the left padding
absorbs the rest, as in MAD. Slice `key_size`: tokens in the probe's key. at_length keeps the vocabulary and
motif sizes: a longer sequence holds more pairs.
Chance: 1/(ns - ns//2) per scored token (a uniform guess among the value tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from . import rng
from .base import IGNORE, Examples, TaskConfig, TaskConfigError, at_least, positive


def distinct_tokens(k: int, m: int, seed: int, stream: str, *counters: torch.Tensor) -> torch.Tensor:
    """[*shape, k] distinct integers from [0, m) in uniformly random order, one draw per counter tuple.

    Floyd's algorithm (the j-th draw uniform in [0, j], replaced by j when taken) gives a uniform k-subset; a
    random argsort orders it, so any prefix is again a uniform draw without replacement. Keyed by the counters
    rather than by row, so that a key's value can be a function of the key itself.
    """
    shape = torch.broadcast_shapes(*(c.shape for c in counters))
    device = counters[0].device
    chosen: list[torch.Tensor] = []
    for i, j in enumerate(range(m - k, m)):
        t = rng.randbelow(torch.full(shape, j + 1, dtype=torch.int64, device=device), seed, stream, *counters, i)
        taken = torch.zeros(shape, dtype=torch.bool, device=device)
        for c in chosen:
            taken |= c == t
        chosen.append(torch.where(taken, j, t))
    drawn = torch.stack(chosen, dim=-1)  # [*shape, k]
    order = torch.argsort(rng.uniform(seed, stream + "/order", *(c[..., None] for c in counters),
                                      torch.arange(k, device=device)), dim=-1)
    return drawn.gather(-1, order)


@dataclass(frozen=True)
class FuzzyRecall(TaskConfig):
    """MAD's fuzzy recall: keys and values of several adjacent tokens, boundaries unmarked."""

    name: ClassVar[str] = "fuzzy_recall"
    chance: ClassVar[str] = "1/num_values per value token, num_values = ns - ns//2 (ns: the key and value tokens)"

    seq_len: int = 128
    vocab_size: int = 16
    #: the longest key, in tokens (each key is 1..k_motif_size tokens, the size uniform)
    k_motif_size: int = 3
    #: the longest value, in tokens
    v_motif_size: int = 3
    #: every recurring key is a query (MAD's benchmark); False: only the final probe, after a copy prefix
    multi_query: bool = True

    def check(self) -> None:
        super().check()
        positive(self, "k_motif_size")
        positive(self, "v_motif_size")
        special = 1 if self.multi_query else 2
        need = special + max(2 * self.k_motif_size, 2 * self.v_motif_size - 1)
        at_least(self, "vocab_size", need,
                 f"(keys of {self.k_motif_size} distinct tokens from ns//2 key tokens, values of {self.v_motif_size} "
                 f"from the other ns - ns//2, ns = vocab_size - {special})")
        if (self.num_keys + 1) ** self.k_motif_size >= 2**62:
            raise TaskConfigError(f"fuzzy_recall: k_motif_size={self.k_motif_size} with {self.num_keys} key tokens "
                                  "gives more keys than int64 can number")
        longest = self.k_motif_size + self.v_motif_size
        at_least(self, "seq_len", 2 * longest + special - 1,
                 f"(one longest pair to recall from and the probe, {longest} tokens each)")

    @property
    def kv_tokens(self) -> int:
        """ns: the tokens that are keys or values."""
        return self.vocab_size - (1 if self.multi_query else 2)

    @property
    def num_keys(self) -> int:
        return self.kv_tokens // 2

    def _generate(self, n: int, seed: int, device: torch.device) -> Examples:
        L, K, V, ns = self.seq_len, self.k_motif_size, self.v_motif_size, self.kv_tokens
        Kv, W = self.num_keys, K + V  # key tokens; widest pair
        copy = 0 if self.multi_query else 1
        budget = L - W - copy  # body tokens, leaving room for the widest probe
        S = max(budget // 2, 1)  # candidate body pairs: at most budget // 2 fit (each takes >= 2 tokens)
        rows = torch.arange(n, device=device)
        slot = torch.arange(S, device=device)

        # slots [n, S]: key size, key tokens (the first key_size of K distinct), an integer naming the key
        key_size = rng.randint(1, K + 1, seed, "fuzzy/key_size", rows[:, None], slot[None, :])
        key_tok = distinct_tokens(K, Kv, seed, "fuzzy/key", rows[:, None], slot[None, :])  # [n, S, K]
        in_key = torch.arange(K, device=device) < key_size[..., None]  # [n, S, K]
        place = (Kv + 1) ** torch.arange(K, device=device)
        code = torch.where(in_key, (key_tok + 1) * place, 0).sum(-1)  # [n, S], distinct for distinct keys

        # a key's value is a function of the key: the same wherever it recurs
        val_size = rng.randint(1, V + 1, seed, "fuzzy/value_size", rows[:, None], code)  # [n, S]
        val_tok = Kv + distinct_tokens(V, ns - Kv, seed, "fuzzy/value", rows[:, None], code)  # [n, S, V]

        width = key_size + val_size
        end = width.cumsum(1)
        fits = end <= budget  # a prefix of the slots; the first always fits (budget >= W)
        body_len = torch.where(fits, end, 0).amax(1)  # [n]

        # the probe repeats the key of a uniformly random fitted body pair
        chosen = rng.randbelow(fits.sum(1), seed, "fuzzy/probe", rows)  # [n]

        def pick(x: torch.Tensor) -> torch.Tensor:  # [n, S, ...] -> [n, ...], the chosen slot
            return x.gather(1, chosen.view(n, *[1] * (x.dim() - 1)).expand(n, 1, *x.shape[2:]))[:, 0]

        # earlier occurrence of the same key: a stable sort by key puts each key's first slot first
        order = torch.sort(code, dim=1, stable=True)
        first_sorted = torch.ones_like(fits)
        first_sorted[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
        first = torch.empty_like(fits).scatter_(1, order.indices, first_sorted)
        queried = fits & ~first if self.multi_query else torch.zeros_like(fits)

        # lay out: body pairs, [COPY], probe, all shifted right by the left padding; one extra column at L
        # takes the probe's last token (it falls off, as in MAD) and a spare one at L + 1 takes unused tokens
        pad = L + 1 - (body_len + copy + pick(width))  # [n]
        start = pad[:, None] + end - width  # [n, S]
        inputs = torch.full((n, L + 2), ns, dtype=torch.int64, device=device)
        targets = torch.full((n, L + 2), IGNORE, dtype=torch.int64, device=device)
        self._write(inputs, targets, start, key_size, key_tok, val_size, val_tok, fits, queried, L + 1)
        probe_at = (pad + body_len + copy)[:, None]
        self._write(inputs, targets, probe_at, pick(key_size)[:, None], pick(key_tok)[:, None],
                    pick(val_size)[:, None], pick(val_tok)[:, None], torch.ones_like(probe_at, dtype=torch.bool),
                    torch.ones_like(probe_at, dtype=torch.bool), L + 1)
        if copy:
            inputs.scatter_(1, probe_at - 1, self.vocab_size - 1)
        return Examples(inputs[:, :L], targets[:, :L], {"key_size": pick(key_size)})

    @staticmethod
    def _write(inputs, targets, start, key_size, key_tok, val_size, val_tok, used, queried, spare) -> None:
        """Write pairs starting at `start` ([n, P]) into inputs and targets ([n, L + 2]) in place."""
        K, V = key_tok.shape[-1], val_tok.shape[-1]
        j_k, j_v = torch.arange(K, device=start.device), torch.arange(V, device=start.device)
        key_pos = torch.where(used[..., None] & (j_k < key_size[..., None]), start[..., None] + j_k, spare)
        val_at = start[..., None] + key_size[..., None] + j_v  # [n, P, V]
        in_val = used[..., None] & (j_v < val_size[..., None])
        n = start.shape[0]
        inputs.scatter_(1, key_pos.reshape(n, -1), key_tok.reshape(n, -1))
        inputs.scatter_(1, torch.where(in_val, val_at, spare).reshape(n, -1), val_tok.reshape(n, -1))
        # the j-th value token is due one position before it appears
        targets.scatter_(1, torch.where(in_val & queried[..., None], val_at - 1, spare).reshape(n, -1),
                         val_tok.reshape(n, -1))
