"""Evaluation windows over documents, defined by the tokens fed to the model and the tokens scored.

`seq_len` (L) is the number of tokens one forward pass is fed: the model's context. The prediction
at every fed position is scored when the token after it is a target, so a window of L fed tokens
scores up to L targets (its last target is the token after the last one fed, never itself fed).
Position 0 of a document has nothing before it and is never a target: text documents start with
BOS (or EOS where the tokenizer has no BOS), which stands for no text, so every token of the text
is scored. Every target is scored exactly once, in both modes.

A document of BOS and ten tokens, L = 4 (`[...]`: the tokens fed; `^`: the targets scored):

    position            0    1    2    3    4    5    6    7    8    9   10
    token             BOS   t1   t2   t3   t4   t5   t6   t7   t8   t9  t10

    stride null (non-overlapping: lm-eval's loglikelihood_rolling)
    window 1         [BOS   t1   t2   t3]                                     scores t1 t2 t3 t4
                             ^    ^    ^    ^
    window 2                              [t4   t5   t6   t7]                 scores t5 t6 t7 t8
                                                 ^    ^    ^    ^
    window 3                                        [t6   t7   t8   t9]       scores t9 t10
                                                                     ^    ^

    stride 2 (sliding: each window feeds L tokens and scores the 2 newest targets)
    window 1         [BOS   t1   t2   t3]                                     scores t1 t2 t3 t4
                             ^    ^    ^    ^
    window 2                    [t2   t3   t4   t5]                           scores t5 t6
                                                 ^    ^
    window 3                              [t4   t5   t6   t7]                 scores t7 t8
                                                           ^    ^
    window 4                                        [t6   t7   t8   t9]       scores t9 t10
                                                                     ^    ^

  stride null: targets in consecutive blocks of L; each window feeds the L tokens before its last
      target (its first target has one token of context, its last L), and a document's last window
      reaches back to feed L tokens. This is lm-evaluation-harness's rolling log-likelihood
      (`get_rolling_token_windows` with max_seq_len = L, context_len = 1), so with L = the model's
      context length the numbers agree with lm-eval's.
  stride s (1 <= s <= L; s = L is stride null): after the first window, which scores its L
      targets, the window end moves s targets at a time and the window feeds the L tokens before
      its last target: every target past the first window has at least L - s + 1 tokens of context
      (the Hugging Face strided evaluation, without losing a target per window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from andromeda.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end - 1) of document `doc` are fed; targets score_from .. end - 1 are scored."""

    doc: int
    begin: int  # first token fed (document position)
    end: int  # one past the last target; the last token fed is end - 2
    score_from: int  # first scored target

    @property
    def n_targets(self) -> int:
        return self.end - self.score_from

    @property
    def length(self) -> int:
        """Tokens fed to the model."""
        return self.end - 1 - self.begin


def plan_windows(doc_lengths: Sequence[int], seq_len: int, stride: int | None = None,
                 max_targets: int | None = None) -> list[Window]:
    """Windows over documents of these lengths (see the module docstring), in document order, until
    max_targets are planned: a window that would pass max_targets is cut short, so exactly
    min(max_targets, all targets) are scored."""
    if seq_len < 1:
        raise ConfigError(f"perplexity: seq_len (tokens fed per window) must be >= 1, got {seq_len}")
    step = seq_len if stride is None else stride
    if not 1 <= step <= seq_len:
        raise ConfigError(f"perplexity: stride must be between 1 and seq_len ({seq_len}), got {stride}; "
                          "leave it null for non-overlapping windows")
    if max_targets is not None and max_targets < 1:
        raise ConfigError(f"perplexity: max_tokens must be >= 1, got {max_targets}")
    out: list[Window] = []
    budget = max_targets
    for d, n in enumerate(doc_lengths):
        prev_end = 1  # position 0 is never a target
        end = min(seq_len + 1, n)
        while prev_end < n:
            if budget is not None and end - prev_end > budget:
                end = prev_end + budget
            out.append(Window(d, max(0, end - 1 - seq_len), end, prev_end))
            if budget is not None:
                budget -= end - prev_end
                if budget == 0:
                    return out
            prev_end = end
            end = min(end + step, n)
    return out


def targets_of(doc_lengths: Sequence[int]) -> int:
    """Targets all windows over these documents score: every position after each document's first."""
    return int(sum(max(0, n - 1) for n in doc_lengths))


__all__ = ["Window", "plan_windows", "targets_of"]
