"""A local HTTP server speaking the part of OpenAI's API that the batch pipeline uses.

Files (upload, retrieve, content) and batches (create, retrieve, list, cancel) for
`/v1/embeddings`, with the real API's lifecycle: validating -> in_progress -> finalizing ->
completed, failed (bad input is accepted at upload and fails the batch later, with
`errors.data[].line`), expired and cancelled (cancelling first) with partial output. Faults are
scripted per test: HTTP errors, responses lost after the server acted, and per-request failures
in the output (see BatchPlan).
"""

from tests.pipeline.fake_openai.batches import BatchPlan
from tests.pipeline.fake_openai.embeddings import EMBEDDING_DIMENSIONS, fake_embedding
from tests.pipeline.fake_openai.server import API_KEY, FakeOpenAIServer

__all__ = [
    "API_KEY",
    "EMBEDDING_DIMENSIONS",
    "BatchPlan",
    "FakeOpenAIServer",
    "fake_embedding",
]
