"""Evaluation windows over documents: each token after a document's first is scored exactly once.

A window is a slice [begin, end) of one document fed to the model; it scores the targets at
positions score_from .. end-1 (position p is predicted from the tokens before it in the window),
the earlier positions are context only (labels -100). Position 0 of a document has nothing
before it and is never a target (text documents start with BOS so that no text goes unscored).

  stride None (non-overlapping): consecutive windows share one token, the context of the next
      window's first target: [0, W), [W-1, 2W-1), ... Context restarts at every window, except
      that a document's last window reaches back to hold W tokens (it is stride W-1).
  stride s (sliding, 1 <= s <= W-1): the window end moves s tokens at a time and the window
      keeps the W tokens before it, so each target has at least W-s tokens of context (all it
      has, inside the first window): the Hugging Face strided evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from andromeda.errors import ConfigError


@dataclass(frozen=True)
class Window:
    doc: int
    begin: int  # first token fed to the model (document position)
    end: int  # one past the last token fed
    score_from: int  # first scored target; targets are score_from .. end-1

    @property
    def n_targets(self) -> int:
        return self.end - self.score_from

    @property
    def length(self) -> int:
        return self.end - self.begin


def plan_windows(doc_lengths: Sequence[int], window: int, stride: int | None = None,
                 max_targets: int | None = None) -> list[Window]:
    """Windows over documents of these lengths, in document order, until max_targets are planned.

    A window that would pass max_targets is cut short, so exactly min(max_targets, all) targets
    are scored.
    """
    if window < 2:
        raise ConfigError(f"perplexity: the window (seq_len) must be >= 2 tokens, got {window}")
    step = window - 1 if stride is None else stride
    if not 1 <= step <= window - 1:
        raise ConfigError(
            f"perplexity: stride must be between 1 and seq_len - 1 ({window - 1}), got {stride}; "
            "leave it null for non-overlapping windows"
        )
    if max_targets is not None and max_targets < 1:
        raise ConfigError(f"perplexity: max_tokens must be >= 1, got {max_targets}")
    out: list[Window] = []
    budget = max_targets
    for d, n in enumerate(doc_lengths):
        prev_end = 1  # position 0 is never a target
        end = min(window, n)
        while prev_end < n:
            if budget is not None and end - prev_end > budget:
                end = prev_end + budget
            begin = max(0, end - window)
            out.append(Window(d, begin, end, prev_end))
            if budget is not None:
                budget -= end - prev_end
                if budget == 0:
                    return out
            prev_end = end
            end = min(end + step, n)
    return out


__all__ = ["Window", "plan_windows"]
