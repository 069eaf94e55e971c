"""The package and its third-party dependencies import here, and chromadb works in memory."""

import os

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def test_dependencies_import_and_chromadb_runs_an_in_memory_collection():
    import boto3
    import chromadb
    import openai
    import receipt_label.pipeline
    from chromadb.config import Settings

    assert boto3.__version__ and openai.__version__
    assert chromadb.__version__.startswith("1.")
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection(
        "imports_test", metadata={"hnsw:space": "cosine"}
    )
    collection.upsert(
        ids=["a", "b"],
        embeddings=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        documents=["milk", "bread"],
    )
    assert collection.query(query_embeddings=[[0.9, 0.1, 0.0]], n_results=1)["ids"] == [
        ["a"]
    ]
    assert receipt_label.pipeline.find_unembedded
