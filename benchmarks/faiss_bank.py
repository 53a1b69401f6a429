"""FAISS memory bank at scale: approximate indexes against exact search on random unit vectors.

    python benchmarks/faiss_bank.py [--n 1000000] [--dim 64] [--queries 1000] [--kinds ivfpq,hnsw]

Prints build seconds, queries/s and recall@10 (share of the exact top-10 found
in the approximate top-10) for each index kind, with exact (flat) search
measured in the same run as the baseline. ``benchmarks/run.py`` runs it at a
smaller ``n``.
"""

import argparse
import time

import faiss
import numpy as np

from figures import Figure

from mmgen.retrieval.memory_bank import IndexSpec, MemoryBank


def bank_figures(n: int, dim: int, n_queries: int, kinds: list[str], *, log=print) -> list[Figure]:
    log(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {n:,} vectors of dim {dim}")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # queries near stored vectors, as real queries are near real documents
    queries = base[rng.choice(n, n_queries, replace=False)] + 0.1 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def measure(spec: IndexSpec):
        start = time.perf_counter()
        bank = MemoryBank.build(base, spec=spec)
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = bank.search(queries, 10)
        return built, n_queries / (time.perf_counter() - start), ids

    _, exact_qps, exact = measure(IndexSpec(kind="flat"))
    figures = [Figure("6 faiss", f"flat (exact), {n:,} x {dim}", exact_qps, "queries/s")]
    for kind in kinds:
        built, qps, ids = measure(IndexSpec(kind=kind, nlist=4096 if n >= 500_000 else 256))
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        figures.append(Figure("6 faiss", f"{kind}, {n:,} x {dim}", qps, "queries/s", "exact", exact_qps,
                              note=f"recall@10 {recall:.3f}, build {built:.1f}s"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64, help="the dual encoder's embed_dim")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="ivfpq,hnsw")
    args = parser.parse_args()
    for figure in bank_figures(args.n, args.dim, args.queries, args.kinds.split(",")):
        print(f"{figure.what:>24}: {figure.value:,.0f} queries/s" + (f" ({figure.ratio:.1f}x exact), {figure.note}"
                                                                     if figure.ratio else ""))


if __name__ == "__main__":
    main()
