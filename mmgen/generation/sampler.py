"""Modality-constrained sampling of interleaved documents with the KV cache.

Grammar enforced per sequence (Chameleon restricts logits to the active
modality): in text mode only text pieces, EOS and BOI are allowed, BOI only
while fewer than ``max_images`` images were sampled and a whole image
(BOI + h·w codes + EOI) still fits in ``max_new_tokens``; after BOI exactly
h·w image codes follow, then EOI is forced and text resumes. ``force_image``
makes the first sampled token BOI. A prompt that ends inside an image (e.g.
a text-to-image prompt ending in BOI) is continued with the codes still due
and EOI; that image counts as one of ``max_images``. Each sequence's state
lives in tensors and its mask is a row of a precomputed table, so a batch of
prompts steps together without Python branching per sequence and without host
syncs (the only sync is a check every ``_DONE_CHECK_EVERY`` steps for whether
all sequences ended).

Guidance streams. Classifier-free guidance (``cfg_scale > 0``) and CD-K
(``cdk_k > 0``) add an unconditional stream per prompt — the prompt without
its text and images, i.e. BOS (plus the open image part when the prompt ends
inside an image) — and, with ``image_cfg_scale > 0``, Chameleon's image-only
stream (the prompt's images without its text). The streams are extra rows of
the same batch, so one forward serves all of them. A guidance stream follows
only the images its prompt samples: when the conditional stream emits BOI, a
code or EOI the guidance rows receive the same token; while it emits text they
rewrite a PAD at their next free cache slot, which the next image token
overwrites (the causal mask over slots never shows it to a later token).
Guidance changes image logits only; text is sampled from the conditional
stream (with the repetition penalty).

Prompts of different lengths are right-padded and prefilled in one call; each
row then decodes at its own cache slots (see mmgen/model/kv_cache.py). How the
next logits are computed is a ``Decoding``: ``CachedDecoding`` is the fast path;
the tests hold a reference that recomputes the whole sequence every step and
check that both sample the same tokens.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from mmgen.generation.logits_processors import (
    BEGIN_IMAGE,
    DONE,
    END_IMAGE,
    IMAGE,
    TEXT,
    TEXT_OR_IMAGE,
    contrastive_top_k,
    draw,
    guide,
    modality_mask_table,
)
from mmgen.generation.logits_processors import repetition_penalty as penalise_repeats
from mmgen.progress import progress_bar

_DONE_CHECK_EVERY = 8
_PROGRESS_EVERY = 32


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. The same params, seed included, and prompts give the same samples.

    ``cfg_scale`` 0 turns guidance off; any other value runs the unconditional
    stream (at 1 the samples equal unguided ones). ``eos_stops`` False keeps
    sampling after EOS until ``max_new_tokens``.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_images: int = 1
    force_image: bool = False
    cfg_scale: float = 0.0
    image_cfg_scale: float = 0.0
    cdk_k: int = 0
    cdk_alpha: float = 0.1
    seed: int = 0
    eos_stops: bool = True

    def __post_init__(self):
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")

    @classmethod
    def from_section(cls, section, **changes) -> SamplingParams:
        """The params named like fields of a config section (e.g. ``SampleConfig``), then ``changes``."""
        names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(section)}
        return cls(**({n: getattr(section, n) for n in names} | changes))

    @property
    def unconditional_stream(self) -> bool:
        return self.cfg_scale > 0 or self.cdk_k > 0 or self.image_cfg_scale > 0

    @property
    def image_only_stream(self) -> bool:
        return self.image_cfg_scale > 0


class Decoding(Protocol):
    """How the sampler gets the next logits of every row (float32, [rows, V])."""

    def open(self, rows: int, length: int) -> AbstractContextManager:
        """Ready for ``rows`` rows of up to ``length`` tokens while the context lasts."""

    def prefill(self, prompts: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        """Logits after each row's prompt; ``prompts`` [rows, P] right-padded."""

    def step(self, seq: torch.Tensor, fed: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Logits after ``fed`` [rows], just written into ``seq`` at each row's ``slot``."""


class CachedDecoding:
    """The fast path: the prompts go into the model's static KV cache at once, then one token per row a step.

    ``compile`` compiles the one-token decode step with torch.compile.
    """

    def __init__(self, model, *, compile: bool = False):
        self.model = model
        self.decode = torch.compile(model, dynamic=False) if compile else model

    @contextmanager
    def open(self, rows: int, length: int) -> Iterator[None]:
        param = next(self.model.parameters())
        self.model.setup_cache(rows, length, dtype=param.dtype, device=param.device)
        try:
            yield
        finally:
            self.model.clear_cache()

    def prefill(self, prompts: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(prompts.shape[1], device=prompts.device)
        rows = torch.arange(prompts.shape[0], device=prompts.device)
        return self.model(prompts, input_pos=positions)[rows, prompt_len - 1].float()

    def step(self, seq: torch.Tensor, fed: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        return self.decode(fed[:, None], input_pos=slot[:, None])[:, 0].float()


@torch.inference_mode()
def sample(
    model,
    vocab,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    compile: bool = False,
    progress: Callable[[int, int], None] | None = None,
    decoding: Decoding | None = None,
) -> list[list[int]]:
    """Sample a continuation of every prompt; returns the new tokens only (EOS included).

    ``model`` is a ``mmgen.model.Transformer`` (evaluated here, its mode restored
    after); ``vocab`` provides pad, eos, boi, eoi, size, text_range, image_range
    and grid. ``decoding`` defaults to ``CachedDecoding(model, compile=compile)``.
    ``progress(step, max_new_tokens)`` is called every ``_PROGRESS_EVERY`` steps
    (it gets no tensors, so it adds no host sync).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    device = next(model.parameters()).device
    streams = [list(map(int, p)) for p in prompts] + guidance_streams(prompts, vocab, params)
    seq, prompt_len = _right_padded(streams, vocab.pad, params.max_new_tokens, device)
    decoding = decoding or CachedDecoding(model, compile=compile)
    was_training = model.training
    model.eval()
    try:
        with decoding.open(len(streams), seq.shape[1]):
            return _decode(decoding, vocab, prompts, params, seq, prompt_len, progress)
    finally:
        model.train(was_training)


def sample_in_batches(model, vocab, prompts: list[list[int]], params: SamplingParams, batch_size: int, *,
                      desc: str = "sampling") -> list[list[int]]:
    """``sample`` over ``batch_size`` prompts at a time (memory), each batch with the same params and seed;
    a progress bar named ``desc`` counts the prompts."""
    out: list[list[int]] = []
    with progress_bar(desc=desc, total=len(prompts), unit="prompt") as bar:
        for s in range(0, len(prompts), batch_size):
            out += sample(model, vocab, prompts[s : s + batch_size], params)
            bar.update(len(prompts[s : s + batch_size]))
    return out


def guidance_streams(prompts: list[list[int]], vocab, params: SamplingParams) -> list[list[int]]:
    """The guidance rows that follow the prompts in the batch: unconditional, then image-only, each one per prompt."""
    streams = []
    if params.unconditional_stream:
        streams += [guidance_prompt(p, vocab, keep_images=False) for p in prompts]
    if params.image_only_stream:
        streams += [guidance_prompt(p, vocab, keep_images=True) for p in prompts]
    return streams


def _right_padded(streams: list[list[int]], pad: int, room: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, longest + room] token buffer holding each stream at its start, and the streams' lengths."""
    lengths = torch.tensor([len(s) for s in streams], device=device)
    seq = torch.full((len(streams), int(lengths.max()) + room), pad, dtype=torch.long, device=device)
    for r, stream in enumerate(streams):
        seq[r, : len(stream)] = torch.tensor(stream, dtype=torch.long)
    return seq, lengths


def _decode(decoding: Decoding, vocab, prompts, params: SamplingParams, seq, row_len, progress) -> list[list[int]]:
    """The decode loop: choose a token per prompt under its grammar, record it, feed it to every row."""
    n_new = params.max_new_tokens
    grammar = _Grammar(prompts, vocab, params, seq.device)
    rows = torch.arange(seq.shape[0], device=seq.device)
    is_cond = rows < len(prompts)
    generator = torch.Generator(device=seq.device).manual_seed(params.seed)
    logits = decoding.prefill(seq[:, : int(row_len.max())], row_len)
    for step in range(n_new):
        state = grammar.state(step)
        token = _choose(logits, state, grammar, params, generator)
        token = grammar.record(step, token)
        if step + 1 == n_new:
            break
        if (step + 1) % _DONE_CHECK_EVERY == 0 and bool(grammar.done.all()):
            break
        if progress is not None and (step + 1) % _PROGRESS_EVERY == 0:
            progress(step + 1, n_new)
        # every conditional row advances; a guidance row only on image tokens (see the module doc)
        fed = token.repeat(seq.shape[0] // len(prompts))
        advance = is_cond | (fed == vocab.boi) | (fed == vocab.eoi) | vocab.is_image(fed)
        fed = torch.where(advance, fed, vocab.pad)
        seq[rows, row_len] = torch.where(advance, fed, seq[rows, row_len])
        logits = decoding.step(seq, fed, row_len)
        row_len = row_len + advance.long()
    return grammar.samples()


class _Grammar:
    """Per prompt: what has been sampled and which modality may come next, all in tensors."""

    def __init__(self, prompts, vocab, params: SamplingParams, device):
        B, V = len(prompts), vocab.size
        h, w = vocab.grid
        self.vocab, self.params = vocab, params
        self.image_len = h * w + 2
        self.mask_table = modality_mask_table(vocab, device)
        self.out = torch.full((B, params.max_new_tokens), vocab.pad, dtype=torch.long, device=device)
        self.n_out = torch.zeros(B, dtype=torch.long, device=device)
        due = [_tokens_due_in_open_image(p, vocab, h * w) for p in prompts]
        self.image_left = torch.tensor(due, dtype=torch.long, device=device)  # codes + EOI still due
        self.n_images = (self.image_left > 0).long()
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=device)  # text tokens so far (repetition penalty)
        for b, prompt in enumerate(prompts):
            self.seen[b, [t for t in prompt if vocab.is_text(int(t))]] = True

    def state(self, step: int) -> torch.Tensor:
        p = self.params
        image_fits = step + self.image_len <= p.max_new_tokens
        text_state = torch.where((self.n_images < p.max_images) & image_fits, TEXT_OR_IMAGE, TEXT)
        if step == 0 and p.force_image and p.max_images > 0 and image_fits:  # (an open image overrides)
            text_state = torch.full_like(text_state, BEGIN_IMAGE)
        left = self.image_left
        state = torch.where(left > 1, IMAGE, torch.where(left == 1, END_IMAGE, text_state))
        return torch.where(self.done, DONE, state)

    def record(self, step: int, token: torch.Tensor) -> torch.Tensor:
        """Record each prompt's token (PAD for a finished one) and return what was recorded."""
        vocab = self.vocab
        live = ~self.done
        token = torch.where(live, token, vocab.pad)
        self.out[:, step] = token
        self.n_out += live.long()
        opened = live & (token == vocab.boi)
        self.n_images += opened.long()
        self.image_left = torch.where(opened, self.image_len - 1, (self.image_left - 1).clamp(min=0))
        is_text = live & vocab.is_text(token)
        self.seen.scatter_(1, token[:, None], self.seen.gather(1, token[:, None]) | is_text[:, None])
        if self.params.eos_stops:
            self.done = self.done | (live & (token == vocab.eos))
        return token

    def samples(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.out.cpu(), self.n_out.tolist())]


def _choose(logits, state, grammar: _Grammar, params: SamplingParams, generator) -> torch.Tensor:
    """Each prompt's next token: its text from the conditional row (repetition-penalised), its image codes guided."""
    B = grammar.out.shape[0]
    mask = grammar.mask_table[state]
    step_logits = penalise_repeats(logits[:B], grammar.seen, params.repetition_penalty) + mask
    if logits.shape[0] > B:
        step_logits = torch.where((state == IMAGE)[:, None], _guided_image_logits(logits, B, mask, params), step_logits)
    return draw(step_logits, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                generator=generator)


def _guided_image_logits(logits, B, mask, p: SamplingParams):
    cond, uncond = logits[:B], logits[B : 2 * B]
    image_only = logits[2 * B : 3 * B] if p.image_only_stream else None
    expert = cond
    if p.cfg_scale > 0 or p.image_only_stream:
        expert = guide(cond, uncond, p.cfg_scale if p.cfg_scale > 0 else 1.0, image_only=image_only,
                       image_scale=p.image_cfg_scale if p.image_only_stream else 1.0)
    expert = expert + mask
    if p.cdk_k > 0:
        return contrastive_top_k(expert, uncond + mask, k=p.cdk_k, alpha=p.cdk_alpha)
    return expert


def guidance_prompt(prompt: list[int], vocab, *, keep_images: bool) -> list[int]:
    """A guidance stream's prompt: BOS, the prompt's complete images when ``keep_images``
    (Chameleon's image-only stream), and the open image part when the prompt ends inside one."""
    out = [vocab.bos]
    image: list[int] | None = None
    for t in map(int, prompt):
        if t == vocab.boi:
            image = [t]
        elif image is not None:
            image.append(t)
            if t == vocab.eoi:
                if keep_images:
                    out += image
                image = None
    if image is not None:
        out += image
    return out


def _tokens_due_in_open_image(prompt: list[int], vocab, codes_per_image: int) -> int:
    """Codes + EOI still to sample when the prompt ends inside an image, else 0."""
    last_boi = max((i for i, t in enumerate(prompt) if t == vocab.boi), default=-1)
    if last_boi < 0 or vocab.eoi in prompt[last_boi:]:
        return 0
    codes_given = len(prompt) - last_boi - 1
    if codes_given > codes_per_image:
        raise ValueError(f"prompt holds {codes_given} codes after its last BOI, more than {codes_per_image}")
    return codes_per_image + 1 - codes_given
