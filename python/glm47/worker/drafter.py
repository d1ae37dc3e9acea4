"""The MTP layer as a drafter for speculative decoding: after each step it reads the rows whose
next token is known and proposes greedy draft tokens, chaining itself past the first."""

from __future__ import annotations

from collections.abc import Callable

import torch

from glm47.worker.attention.base import AttentionMetadata
from glm47.worker.batch import DraftInput, ScheduledBatch, ScheduledSeq
from glm47.worker.model.context import ForwardContext
from glm47.worker.model.mtp import MTPLayer
from glm47.worker.step_inputs import StepInputBuilder, StepInputs


class MtpDrafter:
    """`mtp`: the model's MTP layer; `inputs`: a step-input builder of its own (its passes run
    between the model's steps); `context`: the forward context of a draft pass (the runner's)."""

    def __init__(
        self,
        mtp: MTPLayer,
        inputs: StepInputBuilder,
        context: Callable[[AttentionMetadata], ForwardContext],
    ) -> None:
        self.mtp = mtp
        self.inputs = inputs
        self.context = context

    @torch.inference_mode()
    def propose(self, items: list[DraftInput], hidden: torch.Tensor) -> dict[str, list[int]]:
        """Run the MTP layer over the rows of the last step whose next token is known (`hidden`:
        that step's final hidden states; filling its KV cache layer at those positions), then
        propose `num_drafts` greedy tokens per sequence that asks for them, chaining the MTP
        layer on its own output past the first.

        MTP at position i reads the main model's hidden state at i and token i + 1 and predicts
        token i + 2. A chained step at position i + 1 stands in its own output at i for the main
        model's hidden state there; the positions it writes are rewritten with the main model's
        hidden states once the drafts are verified."""
        items = [it for it in items if it.next_ids]
        if not items:
            return {}
        seqs = [ScheduledSeq(it.rid, it.next_ids, it.start_pos, it.page_ids, it.num_drafts > 0)
                for it in items]  # fmt: skip
        rows = [r for it in items for r in range(it.first_row, it.first_row + len(it.next_ids))]
        prev = hidden[torch.tensor(rows, device=hidden.device)]
        inputs = self.inputs.build(ScheduledBatch(seqs))
        out = self._forward(inputs, prev)
        drafting = [it for it in items if it.num_drafts > 0]
        drafts: dict[str, list[int]] = {it.rid: [] for it in drafting}
        last = out[inputs.sample_rows]  # [D, H]: the last row of each drafting sequence
        # Each step's drafting sequences and their tokens, kept on the device: a chained pass
        # takes its input ids from there, so the host queues every pass without waiting for one,
        # and reads all the drafts in one copy at the end.
        steps: list[tuple[list[DraftInput], torch.Tensor]] = []
        for step in range(max((it.num_drafts for it in drafting), default=0)):
            tokens = self.mtp.compute_logits(last).argmax(dim=-1)  # [D]
            steps.append((drafting, tokens))
            drafting, keep = self._still_drafting(drafting, step, tokens.device)
            if not drafting:
                break
            if keep is not None:
                last, tokens = last[keep], tokens[keep]
            # a placeholder id for each chained row: the device's tokens overwrite them
            chain = [ScheduledSeq(it.rid, [0], it.start_pos + len(it.next_ids) + step,
                                  it.page_ids, True) for it in drafting]  # fmt: skip
            inputs = self.inputs.build(ScheduledBatch(chain))
            inputs.input_ids.copy_(tokens)
            last = self._forward(inputs, last)
        if steps:
            proposed = iter(torch.cat([tokens for _, tokens in steps]).tolist())
            for asked, _ in steps:
                for it in asked:
                    drafts[it.rid].append(next(proposed))
        return drafts

    @staticmethod
    def _still_drafting(
        drafting: list[DraftInput], step: int, device: torch.device
    ) -> tuple[list[DraftInput], torch.Tensor | None]:
        """The sequences that want more drafts after `step + 1`, and the index of their rows
        among `drafting`'s (None: all of them)."""
        keep = [i for i, it in enumerate(drafting) if it.num_drafts > step + 1]
        if len(keep) == len(drafting):
            return drafting, None
        index = torch.tensor(keep, device=device, dtype=torch.long)
        return [drafting[i] for i in keep], index

    def _forward(self, inputs: StepInputs, prev_hidden: torch.Tensor) -> torch.Tensor:
        meta = inputs.meta
        return self.mtp(inputs.input_ids, prev_hidden, meta.positions, self.context(meta))
