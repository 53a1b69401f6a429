"""Interoperability with other codebases' checkpoints (Hugging Face Chameleon)."""

from mmgen.interop.hf_chameleon import load_chameleon, save_chameleon

__all__ = ["load_chameleon", "save_chameleon"]
