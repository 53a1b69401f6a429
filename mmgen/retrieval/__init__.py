"""CM3leon-style retrieval: a dual encoder, a FAISS memory bank, and neighbour selection."""
