"""FAISS memory bank at scale: approximate indexes against exact search on random unit vectors.

    python benchmarks/faiss_bank.py [--n 1000000] [--dim 64] [--queries 1000] [--kinds ivfpq,hnsw]

Prints build seconds, queries/s and recall@10 (share of the exact top-10 found
in the approximate top-10) for each index kind, with exact (flat) search
measured in the same run as the baseline.
"""

import argparse
import time

import faiss
import numpy as np

from mmgen.retrieval.memory_bank import IndexSpec, MemoryBank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64, help="the dual encoder's embed_dim")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="ivfpq,hnsw")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {args.n:,} vectors of dim {args.dim}")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # queries near stored vectors, as real queries are near real documents
    queries = base[rng.choice(args.n, args.queries, replace=False)] + 0.1 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def measure(kind: str, spec: IndexSpec):
        start = time.perf_counter()
        bank = MemoryBank.build(base, spec=spec)
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = bank.search(queries, 10)
        return built, args.queries / (time.perf_counter() - start), ids

    _, exact_qps, exact = measure("flat", IndexSpec(kind="flat"))
    print(f"{'flat':>6}: exact baseline, {exact_qps:,.0f} queries/s")
    for kind in args.kinds.split(","):
        spec = IndexSpec(kind=kind, nlist=4096 if args.n >= 500_000 else 256)
        built, qps, ids = measure(kind, spec)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
        print(f"{kind:>6}: build {built:.1f}s, {qps:,.0f} queries/s ({qps / exact_qps:.1f}x exact), recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()
