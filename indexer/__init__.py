"""The retrieval tier: a document store plus BM25 (tantivy) and dense (FAISS) indexes, fused."""
