"""Hugging Face ``ChameleonForConditionalGeneration`` checkpoints ↔ mmgen's decoder and ``Vocab``.

A checkpoint directory holds ``config.json`` (the architecture, plus
``vocabulary_map``: every token string → id) and safetensors weights, either
``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Only the language model is read or written here; ``model.vqmodel.*`` tensors
(the image tokenizer) are left to the VQ-VAE importer, and an export can copy
them through from another checkpoint. Paths are local directories: nothing is
downloaded.

What the conversion has to get right, beyond renaming keys:
- RoPE: mmgen rotates interleaved pairs (2i, 2i+1), Hugging Face rotates
  halves (i, i + head_dim/2). Meta's converter reordered the rows of wq/wk
  inside each head, and the QK-norm affine with them; import undoes that
  reordering and export redoes it. LayerNorm statistics over head_dim do not
  depend on the order, so the function is unchanged.
- QK-norm: one (weight, bias) per head, shape [heads, head_dim], epsilon fixed
  at 1e-5 by Hugging Face whatever ``rms_norm_eps`` says (``qk_norm_eps``).
- Vocabulary: image codes are the tokens named ``IMGIMG<digits as A-J>Z``
  (ids 4..8195 in Meta's release), begin/end image are ``<racm3:break>`` and
  ``<eoss>``, the separator ``<reserved08706>``. The ids come from
  ``vocabulary_map``, never from ``bos_token_id`` & co., which Meta's
  config.json gets wrong (bos_token_id 1 is ``<pad>``). Export also writes
  ``mmgen_vocab.json`` so mmgen-only roles (CM3 sentinels, task tokens)
  survive a round trip.
- Chameleon's forward sets image-token logits to -inf; mmgen returns every
  logit and leaves modality restriction to the sampler's logits processors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmgen.config.schema import ModelConfig
from mmgen.model.transformer import Transformer, ffn_hidden_dim
from mmgen.tokenizers.vocab import DEFAULT_SPECIALS, Vocab

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VOCAB_FILE = "mmgen_vocab.json"

HF_QK_NORM_EPS = 1e-5  # hard-coded in transformers' ChameleonLayerNorm
IMAGE_PREFIX = "IMGIMG"
# mmgen special role -> Chameleon token string
CHAMELEON_SPECIALS = {
    "bos": "<s>",
    "pad": "<pad>",
    "eos": "</s>",
    "boi": "<racm3:break>",
    "eoi": "<eoss>",
    "sep": "<reserved08706>",  # Meta's converter assigns this reserved token as the separator
    "image": "<image>",  # the processor's placeholder for one image code
    "unk": "<unk>",
}
OPTIONAL_SPECIALS = ("image", "unk")
_RESERVED = re.compile(r"<(reserved\d+|unused_\d+)>")


# ----- vocabulary -----


def image_code_of(name: str) -> int | None:
    """The VQ code an ``IMGIMG…Z`` token stands for (A..J spell the digits), or None for other tokens."""
    if not name.startswith(IMAGE_PREFIX) or len(name) < len(IMAGE_PREFIX) + 2:
        return None
    letters = name[len(IMAGE_PREFIX) : -1]
    if not all("A" <= c <= "J" for c in letters):
        return None
    return int("".join(str(ord(c) - ord("A")) for c in letters))


def image_code_name(code: int) -> str:
    return IMAGE_PREFIX + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def vocab_from_vocabulary_map(
    vocabulary_map: dict[str, int], vocab_size: int, grid: tuple[int, int]
) -> Vocab:
    """Chameleon's layout as a ``Vocab``.

    Image codes must be one contiguous run of ids in code order (true of
    Meta's release: id = code + 4). The text range is the longest run of ids
    that are neither image codes, nor special, nor reserved tokens. mmgen's
    further roles (``mask``, ``infill_*``, ``task_*``) are given the free
    reserved tokens in id order.
    """
    images = sorted((token_id, code) for name, token_id in vocabulary_map.items() if (code := image_code_of(name)) is not None)
    if not images:
        raise ValueError("vocabulary_map has no IMGIMG image tokens")
    image_offset = images[0][0]
    if [code for _, code in images] != list(range(len(images))) or any(i != image_offset + c for i, c in images):
        raise ValueError("vocabulary_map image tokens are not one contiguous run of ids in code order")
    specials, pieces = {}, {}
    for role, name in CHAMELEON_SPECIALS.items():
        if name in vocabulary_map:
            specials[role], pieces[role] = int(vocabulary_map[name]), name
        elif role not in OPTIONAL_SPECIALS:
            raise ValueError(f"vocabulary_map lacks Chameleon's {role} token {name!r}")
    not_text = {i for i, _ in images} | set(specials.values())
    reserved = sorted((i, name) for name, i in vocabulary_map.items() if _RESERVED.fullmatch(name) and i not in not_text)
    not_text |= {i for i, _ in reserved}
    # mmgen's own roles (mask, CM3 sentinels, SFT task tokens) take free reserved tokens, lowest ids first, so
    # an imported run fine-tunes with mmgen's SFT format; a role left without a token is simply absent
    free = iter(reserved)
    for role in DEFAULT_SPECIALS:
        if role not in specials and (slot := next(free, None)) is not None:
            specials[role], pieces[role] = slot
    start, best = 0, (0, 0)
    for i in [*sorted(j for j in not_text if j < vocab_size), vocab_size]:
        if i - start > best[1] - best[0]:
            best = (start, i)
        start = i + 1
    return Vocab(
        specials=specials,
        text_offset=best[0],
        text_size=best[1] - best[0],
        image_offset=image_offset,
        image_size=len(images),
        grid=grid,
        size=vocab_size,
        special_pieces=pieces,
    )


def vocabulary_map_from_vocab(vocab: Vocab) -> dict[str, int]:
    """A name for every id: Chameleon's names for its roles, IMGIMG names for codes.

    Text ids are named ``text_<piece id>`` (a config.json carries no text
    tokenizer) and unused ids ``<unused_<id>>``.
    """
    names: dict[int, str] = {}
    for role, token_id in vocab.specials.items():
        names[token_id] = CHAMELEON_SPECIALS.get(role) or vocab.special_piece(role)
    for code in range(vocab.image_size):
        names[vocab.code_to_id(code)] = image_code_name(code)
    for piece in range(vocab.text_size):
        names[vocab.text_to_id(piece)] = f"text_{piece}"
    mapping = {}
    for token_id in range(vocab.size):
        name = names.get(token_id, f"<unused_{token_id}>")
        if name in mapping:
            raise ValueError(f"two ids share the token name {name!r}; rename the special token")
        mapping[name] = token_id
    return mapping


def _grid_from_vq_config(vq: dict[str, Any] | None) -> tuple[int, int]:
    vq = vq or {}
    # Hugging Face defaults: 512-pixel images, five resolution levels (four 2x downsamplings).
    side = int(vq.get("resolution", 512)) // 2 ** (len(vq.get("channel_multiplier", (1, 1, 2, 2, 4))) - 1)
    return side, side


# ----- architecture -----


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """mmgen's ModelConfig for a Hugging Face Chameleon config.json; refuses what mmgen cannot compute."""
    if hf.get("model_type", "chameleon") != "chameleon":
        raise ValueError(f"config.json model_type is {hf.get('model_type')!r}, expected 'chameleon'")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("attention_bias/mlp_bias checkpoints are not supported (mmgen's decoder has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (mmgen uses SwiGLU with silu)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (mmgen implements plain RoPE)")
    if hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        raise ValueError("head_dim other than hidden_size / num_attention_heads is not supported")
    return ModelConfig(
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        ffn_hidden_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        qk_norm=True,
        qk_norm_eps=HF_QK_NORM_EPS,
        norm_placement="swin" if hf.get("swin_norm") else "pre",
        dropout=0.0,
        attention_dropout=float(hf.get("attention_dropout") or 0.0),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
        max_seq_len=hf.get("max_position_embeddings", 4096),
    )


def hf_config_from_model(cfg: ModelConfig, vocab: Vocab, *, vq_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for an mmgen decoder and vocabulary (transformers ≥ 4.44 reads it)."""
    if cfg.image_grid_embedding:
        raise ValueError("Chameleon has no grid embedding of image codes; a model with image_grid_embedding cannot be exported")
    if not cfg.qk_norm:
        raise ValueError("Chameleon always applies QK-norm; a model with qk_norm=False cannot be exported")
    if cfg.qk_norm_eps != HF_QK_NORM_EPS:
        raise ValueError(f"Hugging Face Chameleon fixes the QK-norm epsilon at {HF_QK_NORM_EPS}, model has {cfg.qk_norm_eps}")
    if cfg.dropout and cfg.attention_dropout is None:
        warnings.warn("Hugging Face Chameleon has no residual dropout; only attention dropout is exported", stacklevel=3)
    vocabulary_map = vocabulary_map_from_vocab(vocab)
    config = {
        "architectures": ["ChameleonForConditionalGeneration"],
        "model_type": "chameleon",
        "vocab_size": vocab.size,
        "hidden_size": cfg.dim,
        "intermediate_size": ffn_hidden_dim(cfg),
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        "model_parallel_size": 1,
        "swin_norm": cfg.norm_placement == "swin",
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "pad_token_id": vocab.pad,
        "vocabulary_map": vocabulary_map,
    }
    if "<image>" in vocabulary_map:
        config["image_token_id"] = vocabulary_map["<image>"]
    if vq_config is not None:
        config["vq_config"] = vq_config
    return config


# ----- weights -----


def _pairs_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder dim 0 (heads·head_dim) of each head from interleaved pairs to rotate-half order."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _halves_to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``_pairs_to_halves``."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_LAYER_KEYS = {  # mmgen key inside layers.N -> Hugging Face key inside model.layers.N
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.q_norm.bias": "self_attn.q_norm.bias",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "attention.k_norm.bias": "self_attn.k_norm.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    # swin placement normalises the branch outputs with the same two norms
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def _key_map(cfg: ModelConfig) -> dict[str, str]:
    """mmgen state-dict key -> Hugging Face key."""
    keys = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_KEYS.items():
            keys[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return keys


def _rope_heads(key: str, cfg: ModelConfig) -> int | None:
    """Heads whose rows a key's tensor holds when the RoPE permutation applies to it."""
    if key.endswith(("attention.wq.weight", "attention.q_norm.weight", "attention.q_norm.bias")):
        return cfg.n_heads
    if key.endswith(("attention.wk.weight", "attention.k_norm.weight", "attention.k_norm.bias")):
        return cfg.n_kv_heads or cfg.n_heads
    return None


def _permute(key: str, tensor: torch.Tensor, cfg: ModelConfig, fn) -> torch.Tensor:
    heads = _rope_heads(key, cfg)
    if heads is None:
        return tensor
    if tensor.dim() == 2 and "norm" in key:  # [heads, head_dim] affine: permute the flattened rows
        return fn(tensor.reshape(-1), heads).reshape(tensor.shape)
    return fn(tensor, heads)


def hf_state_to_mmgen(get_tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """mmgen state dict from a Hugging Face tensor getter (key -> tensor, KeyError when absent)."""
    state = {}
    for ours, theirs in _key_map(cfg).items():
        if ours == "output.weight" and cfg.tie_embeddings:
            continue
        state[ours] = _permute(ours, get_tensor(theirs), cfg, _halves_to_pairs)
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def mmgen_state_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (contiguous, unshared) from an mmgen state dict."""
    out = {}
    for ours, theirs in _key_map(cfg).items():
        if ours == "output.weight" and cfg.tie_embeddings:
            continue  # transformers re-ties lm_head to the embedding on load
        out[theirs] = _permute(ours, state[ours].detach(), cfg, _pairs_to_halves).contiguous().clone()
    return out


# ----- files -----

# What a Chameleon directory holds besides config.json and weights (tokenizer, image processor, generation defaults).
EXTRA_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
    "chat_template.jinja", "preprocessor_config.json", "processor_config.json", "generation_config.json",
)


def _same_layout(vocabulary_map: dict[str, int] | None, vocab: Vocab) -> bool:
    """Whether a source checkpoint's vocabulary_map puts images and the required specials where ``vocab`` does."""
    if not vocabulary_map or len(vocabulary_map) > vocab.size or max(vocabulary_map.values()) >= vocab.size:
        return False
    try:
        theirs = vocab_from_vocabulary_map(vocabulary_map, vocab.size, vocab.grid)
    except ValueError:
        return False
    return theirs.image_range == vocab.image_range and all(
        theirs.specials[role] == vocab.specials[role] for role in ("pad", "bos", "eos", "boi", "eoi", "sep")
    )


class _Shards:
    """Read tensors by key from a single safetensors file or an indexed set of shards."""

    def __init__(self, directory: str):
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                self.where = {k: os.path.join(directory, v) for k, v in json.load(f)["weight_map"].items()}
        else:
            single = os.path.join(directory, WEIGHTS_FILE)
            if not os.path.exists(single):
                raise FileNotFoundError(f"missing input {single} (or {INDEX_FILE}) in {directory}")
            with safe_open(single, framework="pt") as f:
                self.where = {k: single for k in f.keys()}
        self.directory = directory
        self._open: dict[str, Any] = {}

    def keys(self) -> Iterable[str]:
        return self.where.keys()

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.where:
            raise KeyError(f"checkpoint {self.directory} has no tensor {key}")
        path = self.where[key]
        if path not in self._open:
            self._open[path] = safe_open(path, framework="pt")
        return self._open[path].get_tensor(key)


def read_hf_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing input {path} (point at a ChameleonForConditionalGeneration directory)")
    with open(path) as f:
        return json.load(f)


def load_chameleon(
    directory: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> tuple[Transformer, Vocab]:
    """A Chameleon checkpoint directory as an mmgen ``Transformer`` (eval mode) and its ``Vocab``.

    The model is built on the meta device and filled tensor by tensor, so the
    peak memory is about one copy of the weights in ``dtype``.
    """
    hf = read_hf_config(directory)
    cfg = model_config_from_hf(hf)
    vocab_path = os.path.join(directory, VOCAB_FILE)
    if os.path.exists(vocab_path):
        vocab = Vocab.load(vocab_path)
    else:
        if not hf.get("vocabulary_map"):
            raise ValueError(f"{directory}/{CONFIG_FILE} has no vocabulary_map")
        vocab = vocab_from_vocabulary_map(hf["vocabulary_map"], hf["vocab_size"], _grid_from_vq_config(hf.get("vq_config")))
    if vocab.size != hf["vocab_size"]:
        raise ValueError(f"{VOCAB_FILE} describes {vocab.size} ids, config.json vocab_size is {hf['vocab_size']}")
    shards = _Shards(directory)
    state = hf_state_to_mmgen(lambda k: shards(k).to(device=device, dtype=dtype), cfg)
    with torch.device("meta"):
        model = Transformer(cfg, hf["vocab_size"])
    model.load_state_dict(state, assign=True, strict=True)
    model._tie()
    return model.eval(), vocab


def save_chameleon(
    model: Transformer,
    vocab: Vocab,
    directory: str,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    extras_from: str | None = None,
) -> None:
    """Write ``model`` and ``vocab`` as a ChameleonForConditionalGeneration directory.

    ``dtype`` converts the weights (default: keep the parameters' dtype).
    ``extras_from``: a Chameleon checkpoint directory whose VQ-VAE
    (``vq_config`` and ``model.vqmodel.*`` tensors), tokenizer and processor
    files, and ``vocabulary_map`` (when it describes the same layout: then the
    real text pieces keep their names) are copied in, so the result is a
    complete checkpoint. Without it transformers initialises the VQ-VAE
    randomly on load (the language model is unaffected). The directory is
    written next to its final place and renamed, so a failure leaves nothing
    half-written.
    """
    if model.vocab_size != vocab.size:
        raise ValueError(f"model has {model.vocab_size} embedding rows, vocab describes {vocab.size} ids")
    source = read_hf_config(extras_from) if extras_from is not None else {}
    config = hf_config_from_model(model.cfg, vocab, vq_config=source.get("vq_config"))  # validates before any work
    if _same_layout(source.get("vocabulary_map"), vocab):
        config["vocabulary_map"] = source["vocabulary_map"]
    tensors = mmgen_state_to_hf(model.state_dict(), model.cfg)
    if extras_from is not None:
        shards = _Shards(extras_from)
        tensors.update({k: shards(k) for k in shards.keys() if k.startswith("model.vqmodel.")})
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    config["dtype"] = config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")

    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-chameleon-", dir=parent)
    try:
        _write_shards(tensors, tmp, max_shard_bytes)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        vocab.save(os.path.join(tmp, VOCAB_FILE))
        for name in EXTRA_FILES:
            if extras_from is not None and os.path.exists(os.path.join(extras_from, name)):
                shutil.copyfile(os.path.join(extras_from, name), os.path.join(tmp, name))
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_shards(tensors: dict[str, torch.Tensor], directory: str, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key].cpu()
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, WEIGHTS_FILE), metadata=metadata)
        return
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

