"""Memory edits: update what a trained model knows by changing its memory bank, then re-index it.

    python retrieval/edit_bank.py --config demo --retrieval.bank_define edits.jsonl
    python retrieval/edit_bank.py --config demo --retrieval.bank_add my_captions.jsonl
    python eval/sample.py --config demo --prompt "Here is a drawing. Draw a Zorbel." --sample.retrieve 1

``retrieval.bank_define`` is a jsonl of entity definitions, one a line, e.g.
``{"name": "Zorbel", "parts": [{"shape": "circle", "color": "red", "size": "large"},
{"shape": "square", "color": "blue", "size": "small"}], "layout": "above"}`` (one part and no layout for a
one-shape entity; layouts "above" and "to the left of"): a name the bank already defines gets the new look,
a new name is a new entity. ``retrieval.bank_add`` adds the documents of any corpus. The bank corpus
(``corpus/bank/``) is rewritten, ``corpus/entities.json`` follows (so the report scores the edited looks),
``tokens/bank`` is encoded again and the memory bank and neighbour tables rebuilt (as
retrieval/build_index.py does). The model is not touched: sampling with ``sample.retrieve`` reads the new
definitions.
"""

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.config.errors import ConfigError
from mmgen.data.token_shards import TokenShards
from mmgen.device import generation_device
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.edits import edit_bank, encode_bank, read_definitions
from mmgen.retrieval.neighbours import build_bank_and_neighbours
from mmgen.retrieval.query import load_retriever
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("edit_bank", __doc__)
    cfg, paths, r = stage.cfg, stage.paths, stage.cfg.retrieval
    if not r.bank_define and not r.bank_add:
        raise ConfigError("nothing to edit: give --retrieval.bank_define FILE.jsonl and/or --retrieval.bank_add CORPUS")
    definitions = read_definitions(r.bank_define) if r.bank_define else []
    device = generation_device()
    # every input is checked before the bank changes
    encoder, _ = load_retriever(paths.retrieval_encoder, paths.memory_bank, device=device)
    tokenizer = load_run_tokenizer(paths, device)
    changed = edit_bank(cfg, paths, definitions=definitions, documents_url=r.bank_add)
    print(f"bank corpus: {changed['bank_documents']} documents; replaced {', '.join(changed['replaced']) or 'none'}; "
          f"added entities {', '.join(changed['added']) or 'none'}; added documents {changed['documents_added']}")
    encoded = encode_bank(cfg, paths, tokenizer)
    print(f"encoded {encoded['documents_out']} bank documents into {paths.tokens('bank')}")
    splits = {split: (TokenShards(paths.tokens(split)), paths.neighbours(split)) for split in ("train", "heldout")}
    report = build_bank_and_neighbours(encoder, tokenizer.vocab, bank_documents(paths), splits, r, paths.memory_bank,
                                       text_tokenizer=tokenizer.text_tok)  # fmt: skip
    stage.record_timing(**changed, neighbours=report)


if __name__ == "__main__":
    with torch.no_grad():
        run_cli(main)
