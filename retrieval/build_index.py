"""Build the FAISS memory bank and the neighbour tables of the token shards.

    python retrieval/build_index.py --config demo
    torchrun --nproc-per-node 4 retrieval/build_index.py --config demo

Embeds every training document (from its token shards, with the encoder of
retrieval/train_encoder.py) and every document of the run's bank corpus
(``tokens/bank``, when the world has entities or memory edits added one),
builds the index ``retrieval.index_kind`` at ``<run>/retrieval/bank/``, and stores k neighbours per document of each split
as ``<run>/retrieval/neighbours/<split>.npy`` — never the document itself, an
exact duplicate of it, or a near-duplicate. Under torchrun each rank embeds a
contiguous slice of the documents (whole batches of
``retrieval.embed_batch_size``); rank 0 gathers them, builds the index and
writes every file, identical to a single-process run's. With a bank corpus and ``retrieval.retriever``
hybrid (the default) it also writes the name lookup (``<run>/retrieval/bank/names/``) and each document's
neighbours start with the bank-corpus documents it names. In a world with named entities it ends with the recall@1/5
of each entity's defining document for the entity prompts (``eval.entity_items``
per group of the ``eval.split`` items): the run's retriever, the dual encoder alone, BM25 over the bank's
words, tf-idf over text pieces and random retrieval.
"""

from datetime import timedelta

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.data.entities import has_entities
from mmgen.data.token_shards import TokenShards
from mmgen.device import join_ranks, leave_ranks
from mmgen.eval.knowledge import recall_lines, run_entity_recall
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.retrieval.encoder import DualEncoder
from mmgen.retrieval.query import load_retriever
from mmgen.retrieval.neighbours import build_bank_and_neighbours
from mmgen.tokenizers.run import load_run_tokenizer, load_text_tokenizer
from mmgen.tokenizers.vocab import Vocab


def main() -> None:
    stage = start_stage("build_index", __doc__)
    cfg, paths = stage.cfg, stage.paths
    # gloo carries the gathered embeddings (CPU numpy arrays) whatever the device
    rank, world, device = join_ranks("gloo", timeout=timedelta(hours=4))
    vocab = Vocab.load(paths.vocab)
    encoder = DualEncoder.load(paths.retrieval_encoder, device=device)
    bank = bank_documents(paths)
    splits = {split: (TokenShards(paths.tokens(split)), paths.neighbours(split)) for split in ("train", "heldout")}

    def gather(obj):
        out = [None] * world if rank == 0 else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    report = build_bank_and_neighbours(encoder, vocab, bank, splits, cfg.retrieval, paths.memory_bank,
                                       rank=rank, world=world, gather=gather if world > 1 else None,
                                       text_tokenizer=load_text_tokenizer(paths, vocab))  # fmt: skip
    if rank == 0 and has_entities(paths):
        encoder, memory_bank = load_retriever(paths.retrieval_encoder, paths.memory_bank)
        tokenizer = load_run_tokenizer(paths)
        for group in (None, "head", "tail"):
            recall = run_entity_recall(cfg, paths, tokenizer, encoder=encoder, bank=memory_bank, documents=bank,
                                       group=group)  # fmt: skip
            print(f"{group or 'all'} entities:\n" + "\n".join(recall_lines(recall)))
            report[f"entity_recall_{group}" if group else "entity_recall"] = recall
    if rank == 0:
        stage.record_timing(ranks=world, **report)
    leave_ranks(world)  # no rank reports done before rank 0's files are written


if __name__ == "__main__":
    with torch.no_grad():
        run_cli(main)
