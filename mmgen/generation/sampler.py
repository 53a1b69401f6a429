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

Speculative Jacobi decoding (``jacobi_window`` > 0, see jacobi.py) feeds each
row a window per forward pass: the decided token and guessed image codes after
it; a prompt accepts some of its guesses and so advances by a different number
of tokens than the others. The loop then checks every pass whether all ended.

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

``compile`` turns each step after the first into one compiled graph
(``_whole_step``: feed, forward, mask, guidance, processors, draw, grammar) of
static shapes, the draw's random numbers fed in from the seed's generator. It is
compiled once per model, batch size and cache length (longest prompt +
``max_new_tokens``, rounded up to a multiple of ``_COMPILED_CACHE_MULTIPLE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from mmgen.device import import_cpp_extension_quietly
from mmgen.generation import jacobi
from mmgen.generation.frozen import freezes, frozen_decode, own_code
from mmgen.generation.logits_processors import (
    BEGIN_IMAGE,
    DONE,
    END_IMAGE,
    IMAGE,
    TEXT,
    TEXT_OR_IMAGE,
    contrastive_top_k,
    guide,
    modality_mask_table,
    race,
    race_times,
    sampling_probs,
)
from mmgen.generation.logits_processors import repetition_penalty as penalise_repeats
from mmgen.progress import progress_bar

_DONE_CHECK_EVERY = 8
_COMPILED_CACHE_MULTIPLE = 64
_COMPILED_VARIANTS = 64
"""How many graphs of one compiled function a process may keep: one per model configuration, sampling settings,
batch shape and span of the cache read (and per window width with Jacobi decoding). Dynamo's default limit, 8,
is reached by a report that samples with a few settings and batch sizes; past it the whole step (``fullgraph``)
fails and the model's forward silently runs eager."""
_PROGRESS_EVERY = 32


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. The same params, seed included, and prompts give the same samples.

    ``cfg_scale`` 0 turns guidance off; any other value runs the unconditional
    stream (at 1 the samples equal unguided ones). ``eos_stops`` False keeps
    sampling after EOS until ``max_new_tokens``. ``jacobi_window`` > 0 guesses that many image codes
    ahead and verifies them in the same forward pass (speculative Jacobi decoding, jacobi.py): the samples
    have the same distribution (greedy: the same tokens) in fewer passes, but other samples for a seed.
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
    jacobi_window: int = 0

    def __post_init__(self):
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.jacobi_window < 0:
            raise ValueError(f"jacobi_window must be 0 (off) or positive, got {self.jacobi_window}")

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
        """Logits [rows, W, V] after each token of ``fed`` [rows, W], just written into ``seq`` at each row's
        slots ``slot``, ``slot + 1``, ... (earlier contents of those slots are replaced)."""


class CachedDecoding:
    """The fast path: the prompts go into the model's static KV cache at once, then a window per row a step
    (one token, or with Jacobi decoding the decided token and the guesses after it).

    ``compile`` (True or a torch.compile backend) compiles the model's forward alone (one graph per window
    width; inductor on a CPU with the weights frozen in, frozen.py); ``sample(..., compile=...)`` without
    Jacobi decoding compiles the whole step instead.
    """

    def __init__(self, model, *, compile: bool | str | Callable = False):
        self.model = model
        self.backend = _backend(compile) if compile else None
        self.frozen = self.backend is not None and freezes(model, self.backend)
        # frozen: ``open`` sets it, to the graphs of the model's weights as they are then
        self.decode = model if not compile or self.frozen else torch.compile(model, backend=self.backend, dynamic=False)
        self.forward_passes = 0  # prefill included: what speculative decoding saves

    @contextmanager
    def open(self, rows: int, length: int) -> Iterator[None]:
        if self.frozen:
            backend = self.backend
            frozen = frozen_decode(self.model, "forward",
                                   lambda: torch.compile(own_code(_cached_forward), backend=backend, dynamic=False))
            self.decode = functools.partial(frozen.step, self.model)
            with frozen.open(self.model, rows, length):
                yield
            return
        param = next(self.model.parameters())
        self.model.setup_cache(rows, length, dtype=param.dtype, device=param.device)
        try:
            yield
        finally:
            self.model.clear_cache()

    def prefill(self, prompts: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(prompts.shape[1], device=prompts.device)
        rows = torch.arange(prompts.shape[0], device=prompts.device)
        self.forward_passes += 1
        return self.model(prompts, input_pos=positions)[rows, prompt_len - 1].float()

    def step(self, seq: torch.Tensor, fed: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        self.forward_passes += 1
        return self.logits(fed, slot)

    def logits(self, fed: torch.Tensor, slot: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """``step`` without counting the pass: a compiled whole step calls this, and its loop counts (a counter
        changed inside a graph would be a constant baked into it, recompiled every step). ``span``: the cache
        slots the step reads (``Transformer.forward``'s ``cache_span``)."""
        slots = slot[:, None] + torch.arange(fed.shape[1], device=fed.device)
        return self.decode(fed, input_pos=slots, cache_span=span).float()


def _cached_forward(model, tokens: torch.Tensor, *, input_pos: torch.Tensor, cache_span: int | None) -> torch.Tensor:
    """The model's cached forward as a function of its own, for a frozen compilation (``own_code``)."""
    return model(tokens, input_pos=input_pos, cache_span=cache_span)


@torch.inference_mode()
def sample(
    model,
    vocab,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    compile: bool | str | Callable = False,
    progress: Callable[[int, int], None] | None = None,
    decoding: Decoding | None = None,
) -> list[list[int]]:
    """Sample a continuation of every prompt; returns the new tokens only (EOS included).

    ``model`` is a ``mmgen.model.Transformer`` (evaluated here, its mode restored
    after); ``vocab`` provides pad, eos, boi, eoi, size, text_range, image_range
    and grid. ``decoding`` defaults to ``CachedDecoding(model)``. ``compile`` (True: inductor, or a
    torch.compile backend) compiles the whole decode step — feeding the decided tokens, the model's forward
    on the KV cache, the modality mask, guidance, the processors, the draw and the grammar's bookkeeping —
    as one graph (``_whole_step``) when ``decoding`` is a ``CachedDecoding`` and Jacobi decoding is off; with
    Jacobi decoding (windows of varying width) it compiles the model's forward alone. The first call pays
    the compilation (minutes on a CPU); later calls with the same model, params and batch shape reuse it.
    Inductor on a CPU freezes the weights into the step (frozen.py): they are laid out once for the matrix
    kernels, and a change of the weights compiles the step anew.
    ``progress(step, max_new_tokens)`` is called every ``_PROGRESS_EVERY`` steps
    (it gets no tensors, so it adds no host sync).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    device = next(model.parameters()).device
    streams = [list(map(int, p)) for p in prompts] + guidance_streams(prompts, vocab, params)
    # compiled: the cache's length (one of the graph's shapes) rounded up, so that prompts of similar lengths
    # share a compilation (slots past the last written one are never attended to)
    seq, prompt_len = _right_padded(streams, vocab.pad, params.max_new_tokens + params.jacobi_window, device,
                                    multiple=_COMPILED_CACHE_MULTIPLE if compile else 1)
    whole_step = (bool(compile) and not params.jacobi_window
                  and (decoding is None or isinstance(decoding, CachedDecoding)))
    decoding = decoding or CachedDecoding(model, compile=compile if not whole_step else False)
    backend, rows, length = _backend(compile), len(streams), seq.shape[1]
    frozen = None
    if whole_step and freezes(model, backend):
        frozen = frozen_decode(model, "step", lambda: _compiled(own_code(_whole_step), backend))
    was_training = model.training
    model.eval()
    try:
        with frozen.open(model, rows, length) if frozen else decoding.open(rows, length), _room_to_compile(compile):
            if whole_step:
                step = frozen.step if frozen else _compiled_whole_step(backend)
                return _decode_whole_steps(decoding, vocab, prompts, params, seq, prompt_len, progress, step)
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


def _right_padded(streams: list[list[int]], pad: int, room: int, device, *,
                  multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, longest + room rounded up to ``multiple``] token buffer holding each stream at its start, and the
    streams' lengths."""
    lengths = torch.tensor([len(s) for s in streams], device=device)
    width = -(-(int(lengths.max()) + room) // multiple) * multiple
    seq = torch.full((len(streams), width), pad, dtype=torch.long, device=device)
    for r, stream in enumerate(streams):
        seq[r, : len(stream)] = torch.tensor(stream, dtype=torch.long)
    return seq, lengths


def _decode(decoding: Decoding, vocab, prompts, params: SamplingParams, seq, row_len, progress) -> list[list[int]]:
    """The decode loop: decide each prompt's next token(s) under its grammar, record them, feed them to every row.

    Each pass feeds a window per row: the token just decided, then (with ``params.jacobi_window``, while a
    prompt is inside an image) that many guessed codes, which the next pass accepts or rejects (jacobi.py).
    ``row_len`` is where each row's window starts: the slots before it hold decided tokens only.
    """
    B, n_rows = len(prompts), seq.shape[0]
    grammar = _Grammar(prompts, vocab, params, seq.device)
    rows = torch.arange(n_rows, device=seq.device)
    is_cond = rows < B
    generator = torch.Generator(device=seq.device).manual_seed(params.seed)
    logits = decoding.prefill(seq[:, : int(row_len.max())], row_len)[:, None]
    fed_counts = torch.zeros_like(row_len)  # whether the last fed token entered each row's decided prefix
    drafts: jacobi.Drafts | None = None
    state = grammar.state()
    for step in itertools.count(1):
        target, probs = _target(logits, state, grammar, params)
        verdict = jacobi.verify(target, probs, drafts, grammar.draft_limit(state, logits.shape[1] - 1), generator)
        grammar.record(verdict.tokens, verdict.count)
        state = grammar.state()
        if params.jacobi_window:  # rows advance unevenly: the loop ends when all have ended
            if bool(grammar.done.all()):
                break
            if progress is not None:
                progress(int(grammar.n_out.max()), params.max_new_tokens)
        elif _one_token_loop_ends(step, grammar, params, progress):
            break
        # the decided prefix also grows by the accepted drafts
        row_len = row_len + (verdict.count - 1).repeat(n_rows // B)
        last = verdict.tokens.gather(1, verdict.count[:, None] - 1)[:, 0]
        row_len, fed_counts, window = _next_window(vocab, grammar.done, last, row_len, fed_counts, is_cond)
        drafts = None
        if params.jacobi_window and bool((state == IMAGE).any()):
            drafts = jacobi.next_drafts(target, probs, verdict.count, params.jacobi_window, generator)
            window = torch.cat([window, drafts.tokens.repeat(n_rows // B, 1)], dim=1)
        slots = row_len[:, None] + torch.arange(window.shape[1], device=seq.device)
        seq[rows[:, None], slots] = window
        logits = decoding.step(seq, window, row_len)
    return grammar.samples()


def _one_token_loop_ends(step: int, grammar: _Grammar, params: SamplingParams, progress) -> bool:
    """After ``step`` one-token steps: whether the loop ends (the budget, or every prompt done — a host sync
    only every ``_DONE_CHECK_EVERY`` steps); reports progress every ``_PROGRESS_EVERY``."""
    if step == params.max_new_tokens:
        return True
    if step % _DONE_CHECK_EVERY == 0 and bool(grammar.done.all()):
        return True
    if progress is not None and step % _PROGRESS_EVERY == 0:
        progress(step, params.max_new_tokens)
    return False


def _next_window(vocab, done, last, row_len, fed_counts, is_cond):
    """What every row is fed after its prompt decided ``last`` [B]: (its decided prefix's new length, whether
    the fed token counts in it, the one-token window [rows, 1]). ``row_len`` grows by the token fed before
    (where it counted); every conditional row takes the decided token, a guidance row only an image token
    (see the module doc), and a finished prompt's rows stay where they are."""
    copies = row_len.shape[0] // done.shape[0]
    row_len = row_len + fed_counts
    last = last.repeat(copies)
    image_token = (last == vocab.boi) | (last == vocab.eoi) | vocab.is_image(last)
    fed_counts = ((is_cond | image_token) & ~done.repeat(copies)).long()
    return row_len, fed_counts, torch.where(fed_counts.bool(), last, vocab.pad)[:, None]


def _decode_whole_steps(decoding: CachedDecoding, vocab, prompts, params: SamplingParams, seq, row_len, progress,
                        whole_step: Callable) -> list[list[int]]:
    """``_decode`` without Jacobi decoding, each step after the first one compiled graph (``whole_step``, a
    compiled ``_whole_step``).

    The same tokens as ``_decode`` for a seed, up to the compiler's float rounding: the draw's random
    numbers (``race_times``) come from the same generator in the same order, drawn outside the graph and
    fed to it, so the graph holds no random op, and its shapes change only with the cache slots it reads
    (``_cache_span``: a graph per power of two); the only host sync is the loop's check for the end
    (``_one_token_loop_ends``). The KV cache holds the tokens, so ``seq`` is not written.
    """
    B = len(prompts)
    grammar = _Grammar(prompts, vocab, params, seq.device)
    is_cond = torch.arange(seq.shape[0], device=seq.device) < B
    generator = torch.Generator(device=seq.device).manual_seed(params.seed)
    longest, cache_len, span = int(row_len.max()), seq.shape[1], 0
    logits = decoding.prefill(seq[:, :longest], row_len)[:, None]

    def times():
        if params.temperature <= 0:
            return None
        return race_times((B, logits.shape[-1]), generator, device=seq.device)

    last = _decide(logits, grammar, params, times())
    fed_counts = torch.zeros_like(row_len)
    with contextlib.ExitStack() as guards_checked:
        for step in itertools.count(1):
            if _one_token_loop_ends(step, grammar, params, progress):
                break
            new_span = _cache_span(longest + step, cache_len)  # step k writes slot longest + k - 1 at most
            if new_span != span:  # another graph: its first step checks the guards (and compiles a new one)
                guards_checked.close()
            last, row_len, fed_counts = whole_step(decoding.logits, grammar, params, vocab, last, row_len,
                                                   fed_counts, is_cond, times(), new_span)
            decoding.forward_passes += 1
            if new_span != span:
                guards_checked.enter_context(_guards_already_checked())
                span = new_span
    return grammar.samples()


def _guards_already_checked() -> AbstractContextManager:
    """Dynamo's stance for the steps after a loop's first: its guards are not evaluated again.

    The first call checked them and picked (or compiled) the step's graph; every later step passes the same
    objects, tensors of the same shapes and the same settings, so they would pass again, and checking them
    (~650 guards on the model, cache, grammar and settings) was a fifth of a demo decode step. Dynamo still
    tells graphs of other shapes apart and raises rather than recompile. A stance the caller set other than
    the default is kept as it is."""
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)
    if stance is None or stance.stance != "default" or stance.skip_guard_eval_unsafe or stance.backend is not None:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)


def _whole_step(forward, grammar: _Grammar, params: SamplingParams, vocab, last, row_len, fed_counts, is_cond,
                times, span: int):
    """One decode step: feed every row its token, run the model on the first ``span`` slots of the KV cache,
    decide and record each prompt's next token. Returns (the decided tokens [B], the rows' decided lengths,
    whether each fed token counted)."""
    row_len, fed_counts, window = _next_window(vocab, grammar.done, last, row_len, fed_counts, is_cond)
    return _decide(forward(window, row_len, span), grammar, params, times), row_len, fed_counts


def _cache_span(written: int, cache_len: int) -> int:
    """The cache slots a compiled step reads when at most ``written`` are written: the next power of two from
    ``_COMPILED_CACHE_MULTIPLE`` up, within the cache. Each span is a graph of its own, so a loop compiles
    O(log length) graphs, and its attention reads at most twice the slots written, not the whole cache (a
    demo decode step's attention at batch 8: 149 µs a layer over 128 slots, 58 µs over 64; docs/BENCHMARKS.md,
    "Decode at batch 8")."""
    span = _COMPILED_CACHE_MULTIPLE
    while span < written:
        span *= 2
    return min(span, cache_len)


@functools.cache
def _compiled_whole_step(backend):
    return _compiled(_whole_step, backend)


def _compiled(step, backend):
    # fullgraph: a graph break would split the step and bring the dispatch back; static shapes throughout
    return torch.compile(step, backend=backend, fullgraph=True, dynamic=False)


def _room_to_compile(compile) -> AbstractContextManager:
    """``_COMPILED_VARIANTS`` graphs per compiled function while a compiled sample runs, and the C++ extension
    module the compilation imports imported without its CUDA warning (eager: nothing, and dynamo stays
    unimported)."""
    if not compile:
        return contextlib.nullcontext()
    import_cpp_extension_quietly()
    return torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, _COMPILED_VARIANTS))


def _backend(compile) -> str | Callable:
    """``compile``'s torch.compile backend: True is inductor's."""
    return "inductor" if compile is True else compile


def _decide(logits, grammar: _Grammar, params: SamplingParams, times) -> torch.Tensor:
    """Each prompt's next token [B] from one-token logits [rows, 1, V], recorded in ``grammar``: as
    ``jacobi.verify`` decides it without drafts, its race run on ``times`` (None: greedy)."""
    target, probs = _target(logits, grammar.state(), grammar, params)
    last = target[:, 0].argmax(dim=-1) if probs is None else race(probs[:, 0], times=times)
    grammar.record(last[:, None], torch.ones_like(last))
    return last


class _Grammar:
    """Per prompt: what has been sampled and which modality may come next, all in tensors."""

    def __init__(self, prompts, vocab, params: SamplingParams, device):
        B, V = len(prompts), vocab.size
        h, w = vocab.grid
        self.vocab, self.params = vocab, params
        self.image_len = h * w + 2
        self.mask_table = modality_mask_table(vocab, device)
        # room for a whole window past the budget: a finished row's writes land there and are never read
        self.out = torch.full((B, params.max_new_tokens + params.jacobi_window + 1), vocab.pad, dtype=torch.long,
                              device=device)
        self.n_out = torch.zeros(B, dtype=torch.long, device=device)
        due = [_tokens_due_in_open_image(p, vocab, h * w) for p in prompts]
        self.image_left = torch.tensor(due, dtype=torch.long, device=device)  # codes + EOI still due
        self.n_images = (self.image_left > 0).long()
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        # text tokens so far, kept only for a repetition penalty: updating a [B, V] buffer costs a compiled
        # step more than its draw
        self.seen = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(B, V, dtype=torch.bool, device=device)
            for b, prompt in enumerate(prompts):
                self.seen[b, [t for t in prompt if vocab.is_text(int(t))]] = True

    def state(self) -> torch.Tensor:
        """Each prompt's modality state at its next token."""
        p = self.params
        image_fits = self.n_out + self.image_len <= p.max_new_tokens
        text_state = torch.where((self.n_images < p.max_images) & image_fits, TEXT_OR_IMAGE, TEXT)
        if p.force_image and p.max_images > 0:  # the first token opens an image (an open one overrides)
            text_state = torch.where((self.n_out == 0) & image_fits, BEGIN_IMAGE, text_state)
        left = self.image_left
        state = torch.where(left > 1, IMAGE, torch.where(left == 1, END_IMAGE, text_state))
        return torch.where(self.done, DONE, state)

    def draft_limit(self, state: torch.Tensor, drafts: int) -> torch.Tensor:
        """Drafts each prompt may accept in this pass: codes only, so that the pass decides no more than the
        codes still due (EOI and text come one per pass) and nothing past ``max_new_tokens``."""
        codes_after_next = torch.where(state == IMAGE, self.image_left - 2, 0)
        room = self.params.max_new_tokens - self.n_out - 1
        return torch.minimum(codes_after_next, room).clamp(min=0, max=drafts)

    def record(self, tokens: torch.Tensor, count: torch.Tensor) -> None:
        """Record each prompt's ``count`` first ``tokens`` [B, n] (several only for image codes; nothing for a
        finished prompt)."""
        vocab = self.vocab
        live = ~self.done
        count = torch.where(live, count, 0)
        tokens = torch.where(live[:, None], tokens, vocab.pad)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        self.out[rows[:, None], self.n_out[:, None] + torch.arange(tokens.shape[1], device=tokens.device)] = tokens
        self.n_out += count
        last = tokens.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0]  # the only token unless all are codes
        opened = live & (last == vocab.boi)
        self.n_images += opened.long()
        self.image_left = torch.where(opened, self.image_len - 1, (self.image_left - count).clamp(min=0))
        is_text = live & vocab.is_text(last)
        if self.seen is not None:
            # an indexed write, not scatter_: inductor copies a bool buffer twice around a scatter_
            self.seen[rows, last] = self.seen[rows, last] | is_text
        if self.params.eos_stops:
            self.done = self.done | (live & (last == vocab.eos))
        self.done = self.done | (self.n_out >= self.params.max_new_tokens)

    def samples(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.out.cpu(), self.n_out.tolist())]


def _target(logits, state, grammar: _Grammar, params: SamplingParams):
    """Logits [rows, W, V] of a window -> what each prompt samples from at each position: the final logits
    [B, W, V] (its text from the conditional row, repetition-penalised; its image codes guided) and, unless
    greedy, their probabilities after temperature, top-k and top-p."""
    B = grammar.out.shape[0]
    mask = grammar.mask_table[state][:, None]
    target = logits[:B] if grammar.seen is None else penalise_repeats(logits[:B], grammar.seen[:, None],
                                                                        params.repetition_penalty)
    target = target + mask
    if logits.shape[0] > B:
        guided = _guided_image_logits(logits, B, mask, params)
        target = torch.where((state == IMAGE)[:, None, None], guided, target)
    if params.temperature <= 0:
        return target, None
    return target, sampling_probs(target, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


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
