"""The embedding pipeline's logic: requests to OpenAI's batch API, ChromaDB deltas, compaction."""
