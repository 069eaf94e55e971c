"""compact_embeddings: direct calls and SQS batches, with partial batch failures."""

import json

from receipt_label.chroma_store import VectorRecord
from receipt_label.compaction import write_delta

from tests.pipeline.fixtures import load_handler, read_snapshot

IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"


def _delta(aws, collection, delta_id, receipt_id):
    custom_id = f"IMAGE#{IMAGE}#RECEIPT#{receipt_id:05d}#LINE#00001"
    if collection == "receipt_words":
        custom_id += "#WORD#00001"
    write_delta(
        aws.s3,
        aws.chromadb_bucket,
        collection,
        delta_id,
        [VectorRecord(custom_id, [1.0, 0.0], "x", {"k": 1})],
    )
    return {
        "delta_key": f"{collection}/delta/{delta_id}/",
        "collection": collection,
        "vector_count": 1,
        "batch_id": delta_id,
    }


def test_an_sqs_batch_compacts_each_collection_and_fails_only_unknown_deltas(
    aws, tmp_path
):
    bodies = {
        "m1": _delta(aws, "receipt_lines", "a", 1),
        "m2": _delta(aws, "receipt_words", "b", 2),
        "m3": {
            "delta_key": "receipt_lines/delta/never-written/",
            "collection": "receipt_lines",
        },
    }
    event = {
        "Records": [{"messageId": m, "body": json.dumps(b)} for m, b in bodies.items()]
    }

    result = load_handler("compact_embeddings").handler(event, None)

    assert result == {"batchItemFailures": [{"itemIdentifier": "m3"}]}
    assert set(read_snapshot(aws, "receipt_lines", tmp_path)[1]) == {
        f"IMAGE#{IMAGE}#RECEIPT#00001#LINE#00001"
    }
    assert len(read_snapshot(aws, "receipt_words", tmp_path)[1]) == 1


def test_a_direct_call_reports_what_it_merged(aws):
    _delta(aws, "receipt_lines", "a", 1)
    handler = load_handler("compact_embeddings")

    first = handler.handler({"collection": "receipt_lines"}, None)
    second = handler.handler({"collection": "receipt_lines"}, None)

    assert (first["action"], first["applied_now"], first["vector_count"]) == (
        "compacted",
        ["a"],
        1,
    )
    assert (second["action"], second["snapshot"]) == ("up_to_date", first["snapshot"])


def test_a_message_for_an_unreadable_delta_is_reported_once_not_redelivered_forever(
    aws, tmp_path
):
    bodies = {
        "bad": _delta(aws, "receipt_lines", "corrupt", 1),
        "good": _delta(aws, "receipt_lines", "fine", 2),
    }
    aws.s3.put_object(
        Bucket=aws.chromadb_bucket,
        Key="receipt_lines/delta/corrupt/chroma.sqlite3",
        Body=b"not the file the manifest lists",
    )
    event = {
        "Records": [{"messageId": m, "body": json.dumps(b)} for m, b in bodies.items()]
    }

    result = load_handler("compact_embeddings").handler(event, None)

    assert result == {"batchItemFailures": []}
    assert set(read_snapshot(aws, "receipt_lines", tmp_path)[1]) == {
        f"IMAGE#{IMAGE}#RECEIPT#00002#LINE#00001"
    }
    assert aws.s3_keys(aws.chromadb_bucket, "receipt_lines/quarantine/") == [
        "receipt_lines/quarantine/corrupt.json"
    ]
