"""Steps with prompt tokens as CUDA graphs between the attention calls ("piecewise" graphs).

A step that carries prompt tokens cannot replay a decode graph: its attention depends on the
sequences' layout. Everything else in a layer depends only on the token count, so the forward
pass is cut at each attention call into L + 1 segments, each captured once per padded token count
G (`sizes`):
- segment 0: embedding, then layer 0 up to attention (input norm, projections, rope and the
  new latents stored in the KV cache);
- segment i (1 <= i < L): the end of layer i - 1 (o_proj, post-attention norm, MLP), then layer i
  up to attention;
- segment L: the end of layer L - 1 and the final norm.
Between segments the step's attention backend runs eagerly on the first T rows (it attends with
this step's metadata over the cache the segment filled). One replay costs microseconds of host
time where the same segment run eagerly costs dozens of kernel launches.

Segments exchange data through static buffers of G rows: the token ids, positions and cache slots
(inputs), the attention inputs and the residual stream (written by a segment, read by the
attention and the next segment) and the attention output (written by the runner, read by the next
segment). Rows [T, G) are padding: they hold whatever an earlier step left there (finite values
of the same computation, zeros before the first step), store their latents in slot 0 of page 0
(the reserved padding page; their slots are reset every step), are never given to attention and
are dropped from the result. All graphs share one memory pool and replay in the order they were
captured.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import torch

from glm47.worker.cuda_graph import Capturer
from glm47.worker.model.context import CacheWrite, ForwardContext
from glm47.worker.model.glm4_moe_lite import Glm4MoeLiteForCausalLM
from glm47.worker.model.layers.mla import AttentionInputs

log = logging.getLogger(__name__)


def segment_sizes(max_tokens: int) -> list[int]:
    """Padded token counts to capture, up to `max_tokens` (always included): powers of two from
    16, with a step halfway between each pair above 512 (768, 1536, 3072, 6144)."""
    if max_tokens < 1:
        raise ValueError(f"the largest segment graph size must be >= 1, got {max_tokens}")
    ladder = [16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
    ladder += [16384, 32768]
    return sorted({s for s in ladder if s <= max_tokens} | {max_tokens})


class _Buffers:
    """The static tensors of one padded size G."""

    def __init__(self, model: Glm4MoeLiteForCausalLM, size: int, device: torch.device) -> None:
        cfg = model.cfg
        dtype = model.embed_tokens.weight.dtype
        heads = model.decoder_layers[0].self_attn.num_heads  # this rank's (tensor parallelism)

        def zeros(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dt, device=device)

        self.input_ids = zeros(size, dt=torch.int64)
        self.positions = zeros(size, dt=torch.int64)
        self.slot_mapping = zeros(size, dt=torch.int64)  # [G]: rows [T, G) at slot 0 (page 0)
        self.q_nope = zeros(size, heads, cfg.qk_nope_head_dim)
        self.q_rope = zeros(size, heads, cfg.qk_rope_head_dim)
        self.residual = zeros(size, cfg.hidden_size)
        self.attended = zeros(size, heads, cfg.v_head_dim)
        self.hidden = zeros(size, cfg.hidden_size)  # the final hidden states

    def store(self, inputs: AttentionInputs, residual: torch.Tensor) -> torch.Tensor:
        """Copies one layer's attention inputs and the residual into the buffers."""
        self.q_nope.copy_(inputs.q_nope)
        self.q_rope.copy_(inputs.q_rope)
        self.residual.copy_(residual)
        return self.residual

    def attention_inputs(self, rows: int) -> AttentionInputs:
        return AttentionInputs(self.q_nope[:rows], self.q_rope[:rows])


class SegmentGraphRunner:
    """Captures the segments at each size of `sizes`; runs steps of up to `sizes[-1]` tokens."""

    def __init__(
        self,
        model: Glm4MoeLiteForCausalLM,
        sizes: Sequence[int],
        device: torch.device,
        capturer: Capturer,
        kv_cache: torch.Tensor,  # [num_cache_layers, num_slots, kv_lora_rank + rope_dim]
    ) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.layers = model.decoder_layers
        self.sizes = sorted(sizes)
        self.device = device
        self.capturer = capturer
        self.buffers: dict[int, _Buffers] = {}
        self.replays: dict[int, list[Callable[[], None]]] = {}

    def capture(self) -> None:
        """Largest size first, so that the shared pool is sized by it."""
        start = time.perf_counter()
        with torch.inference_mode():
            for size in reversed(self.sizes):
                buf = _Buffers(self.model, size, self.device)
                self.buffers[size] = buf
                self.replays[size] = [self.capturer(body)[0] for body in self._bodies(buf)]
        log.info(
            "captured %d prompt-step segment graphs (%d sizes up to %d tokens) in %.1f s",
            sum(len(r) for r in self.replays.values()),
            len(self.sizes),
            self.sizes[-1],
            time.perf_counter() - start,
        )

    def _bodies(self, buf: _Buffers) -> list[Callable[[], torch.Tensor]]:
        """The L + 1 segment bodies over `buf` (see the module doc)."""
        model = self.model
        layers = self.layers
        cache = CacheWrite(self.kv_cache, buf.slot_mapping)

        def first() -> torch.Tensor:
            hidden = model.embed_tokens(buf.input_ids)
            inputs, residual = layers[0].begin(buf.positions, hidden, None, cache)
            return buf.store(inputs, residual)

        def middle(i: int) -> Callable[[], torch.Tensor]:
            def body() -> torch.Tensor:
                hidden, residual = layers[i - 1].end(buf.attended, buf.residual)
                inputs, residual = layers[i].begin(buf.positions, hidden, residual, cache)
                return buf.store(inputs, residual)

            return body

        def last() -> torch.Tensor:
            hidden, residual = layers[-1].end(buf.attended, buf.residual)
            hidden, _ = model.norm(hidden, residual)
            buf.hidden.copy_(hidden)
            return buf.hidden

        return [first, *(middle(i) for i in range(1, len(layers))), last]

    def padded_size(self, num_tokens: int) -> int | None:
        i = bisect.bisect_left(self.sizes, num_tokens)
        return self.sizes[i] if i < len(self.sizes) else None

    def can_run(self, num_tokens: int) -> bool:
        return num_tokens >= 1 and self.padded_size(num_tokens) in self.replays

    def run(
        self, input_ids: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:  # [T, H] final hidden states
        """One step of T tokens: the segments of the smallest size >= T, attention between."""
        rows = input_ids.shape[0]
        assert ctx.kv_cache is self.kv_cache, "the segments were captured writing another cache"
        size = self.padded_size(rows)
        assert size is not None and size in self.replays, f"no segment graphs for {rows} tokens"
        buf = self.buffers[size]
        replays = self.replays[size]
        buf.input_ids[:rows].copy_(input_ids)
        buf.positions[:rows].copy_(ctx.meta.positions)
        buf.slot_mapping[:rows].copy_(ctx.meta.slot_mapping)
        buf.slot_mapping[rows:].zero_()  # an earlier, larger step left its slots there
        inputs = buf.attention_inputs(rows)  # the same rows of the buffers for every layer
        attended = buf.attended[:rows]
        replays[0]()
        for layer, replay in zip(self.layers, replays[1:], strict=True):
            attended.copy_(layer.self_attn.attend(inputs, ctx))
            replay()
        return buf.hidden[:rows]
