"""The DynamoDB client against a moto server: queries, pagination, batching, conditions, the lock."""

import pytest
from receipt_dynamo import (
    BatchStatus,
    BatchSummary,
    BatchType,
    BoundingBox,
    EmbeddingStatus,
    EntityError,
    ReceiptDynamoClient,
    ReceiptLine,
    ReceiptMetadata,
    ReceiptWord,
    UnprocessedItemsError,
    target_of,
)

IMAGE = "3f2b8c1e-7d4a-4b9e-8c2f-1a2b3c4d5e6f"
BOX = BoundingBox(0.1, 0.2, 0.3, 0.05)


class DropsHalfOfEachBatch:
    """Passes calls to the real client but reports half of every batch write as unprocessed first."""

    def __init__(self, client, times=1):
        self._client, self.times, self.calls = client, times, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_write_item(self, RequestItems):
        self.calls += 1
        ((table, requests),) = RequestItems.items()
        if self.times > 0:
            self.times -= 1
            kept, dropped = (
                requests[: len(requests) // 2],
                requests[len(requests) // 2 :],
            )
            if kept:
                self._client.batch_write_item(RequestItems={table: kept})
            return {"UnprocessedItems": {table: dropped}}
        return self._client.batch_write_item(RequestItems=RequestItems)


class DropsHalfOfEachGet:
    """Passes calls to the real client but leaves half of every batch get unprocessed, `times` times."""

    def __init__(self, client, times=1):
        self._client, self.times, self.requested = client, times, []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def batch_get_item(self, RequestItems):
        ((table, request),) = RequestItems.items()
        self.requested.append(len(request["Keys"]))
        if self.times > 0:
            self.times -= 1
            half = len(request["Keys"]) // 2
            kept = {**request, "Keys": request["Keys"][:half]}
            response = (
                self._client.batch_get_item(RequestItems={table: kept})
                if half
                else {"Responses": {table: []}}
            )
            response["UnprocessedKeys"] = {
                table: {**request, "Keys": request["Keys"][half:]}
            }
            return response
        return self._client.batch_get_item(RequestItems=RequestItems)


class QueriesInPagesOf:
    """Passes calls to the real client, asking moto for at most `limit` items per query page, so
    results come back in many pages (DynamoDB pages at 1 MB; moto does not)."""

    def __init__(self, client, limit):
        self._client, self.limit, self.pages = client, limit, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def query(self, **query):
        self.pages += 1
        return self._client.query(**{"Limit": self.limit, **query})


@pytest.fixture
def dynamo(aws):
    return ReceiptDynamoClient(aws.table_name, aws.dynamodb, sleep=lambda _: None)


def _lines(count, receipt_id=1, status=EmbeddingStatus.NONE):
    return [
        ReceiptLine(IMAGE, receipt_id, n, f"line {n}", BOX, 0.9, status)
        for n in range(1, count + 1)
    ]


def test_put_many_writes_in_batches_of_25_and_retries_unprocessed_items(aws):
    flaky = DropsHalfOfEachBatch(aws.dynamodb, times=2)
    dynamo = ReceiptDynamoClient(aws.table_name, flaky, sleep=lambda _: None)

    assert dynamo.put_many(_lines(60)) == 60

    assert flaky.calls == 5  # 25 + 25 + 10, and two retries
    assert len(dynamo.list_receipt_lines(IMAGE, 1)) == 60


def test_put_many_gives_up_with_a_clear_error(aws):
    dynamo = ReceiptDynamoClient(
        aws.table_name,
        DropsHalfOfEachBatch(aws.dynamodb, times=99),
        sleep=lambda _: None,
    )
    with pytest.raises(
        UnprocessedItemsError, match="stayed unprocessed after 8 attempts"
    ):
        dynamo.put_many(_lines(4))


def test_lines_by_embedding_status_paginate_and_exclude_words(dynamo):
    dynamo.put_many(
        _lines(7)
        + [ReceiptWord(IMAGE, 1, 1, 1, "w", BOX, 0.9)]
        + _lines(2, 2, EmbeddingStatus.SUCCESS)
    )
    seen, token, pages = [], None, 0
    while True:
        page = dynamo.list_lines_by_embedding_status(
            EmbeddingStatus.NONE, limit=3, next_token=token
        )
        seen += page.items
        pages += 1
        token = page.next_token
        if token is None:
            break
    assert sorted(line.line_id for line in seen) == list(range(1, 8))
    assert pages >= 3
    assert len(dynamo.list_words_by_embedding_status(EmbeddingStatus.NONE).items) == 1
    with pytest.raises(EntityError, match="pass back next_token unchanged"):
        dynamo.list_lines_by_embedding_status(
            EmbeddingStatus.NONE, next_token="garbage!"
        )


def test_status_updates_are_conditional_and_move_the_gsi(dynamo):
    (line,) = _lines(1)
    dynamo.put(line)
    target = target_of(line)

    assert dynamo.set_embedding_status(
        target, EmbeddingStatus.PENDING, only_from=[EmbeddingStatus.NONE]
    )
    assert not dynamo.set_embedding_status(
        target, EmbeddingStatus.PENDING, only_from=[EmbeddingStatus.NONE]
    )
    assert [
        x.line_id
        for x in dynamo.list_lines_by_embedding_status(EmbeddingStatus.PENDING).items
    ] == [1]
    assert dynamo.list_lines_by_embedding_status(EmbeddingStatus.NONE).items == []
    missing = target_of(_lines(2)[1])
    assert not dynamo.set_embedding_status(missing, EmbeddingStatus.SUCCESS)
    assert dynamo.get_embedding_targets([target, missing]) == {
        target.custom_id: dynamo.list_receipt_lines(IMAGE, 1)[0]
    }


def test_batch_summaries_by_status_and_type(dynamo):
    for n, batch_type in enumerate(
        [BatchType.LINE_EMBEDDING] * 3 + [BatchType.WORD_EMBEDDING]
    ):
        assert dynamo.put_batch_summary_if_absent(
            BatchSummary(f"b{n}", batch_type, f"batch_{n}", "t")
        )
    assert not dynamo.put_batch_summary_if_absent(
        BatchSummary("b0", BatchType.LINE_EMBEDDING, "other", "t")
    )

    assert dynamo.finish_batch_summary("b1", BatchStatus.COMPLETED, "file-1")
    assert not dynamo.finish_batch_summary("b1", BatchStatus.FAILED)
    pending_lines = dynamo.list_batch_summaries(
        BatchStatus.PENDING, BatchType.LINE_EMBEDDING
    ).items
    assert sorted(s.batch_id for s in pending_lines) == ["b0", "b2"]
    assert dynamo.get_batch_summary("b1").result_file_id == "file-1"
    assert [
        s.batch_id
        for s in dynamo.list_batch_summaries(
            BatchStatus.PENDING, BatchType.WORD_EMBEDDING
        ).items
    ] == ["b3"]


def test_metadata_lookup(dynamo):
    dynamo.put(ReceiptMetadata(IMAGE, 1, canonical_merchant_name="Costco"))
    assert dynamo.get_receipt_metadata(IMAGE, 1).best_merchant_name == "Costco"
    assert dynamo.get_receipt_metadata(IMAGE, 2) is None


def test_lock_is_exclusive_until_it_expires_and_only_its_owner_refreshes_or_releases_it(
    dynamo,
):
    assert dynamo.acquire_lock("receipt_lines", "a", 10, now=1000)
    assert not dynamo.acquire_lock("receipt_lines", "b", 10, now=1005)
    assert not dynamo.refresh_lock("receipt_lines", "b", 10, now=1005)
    assert dynamo.refresh_lock(
        "receipt_lines", "a", 10, now=1005
    )  # now expires at 1015
    assert not dynamo.acquire_lock("receipt_lines", "b", 10, now=1012)
    assert dynamo.acquire_lock(
        "receipt_lines", "b", 10, now=1016
    )  # expired: taken over
    assert not dynamo.refresh_lock(
        "receipt_lines", "a", 10, now=1017
    )  # fencing: a lost it
    assert not dynamo.release_lock("receipt_lines", "a")
    lock = dynamo.get_lock("receipt_lines")
    assert (lock.owner, lock.expires) == ("b", 1026)
    assert dynamo.release_lock("receipt_lines", "b")
    assert dynamo.get_lock("receipt_lines") is None
    assert dynamo.acquire_lock(
        "receipt_words", "a", 10, now=1000
    )  # one lock per collection


def test_an_expired_lock_cannot_be_refreshed_even_by_its_owner(dynamo):
    assert dynamo.acquire_lock("receipt_lines", "a", 10, now=1000)
    assert not dynamo.refresh_lock("receipt_lines", "a", 10, now=1011)


def _key(line):
    item = line.to_item()
    return {"PK": item["PK"], "SK": item["SK"]}


def test_get_items_over_100_keys_in_order_with_duplicates_and_missing_keys(aws):
    lines = _lines(230)
    counting = DropsHalfOfEachGet(aws.dynamodb, times=0)
    dynamo = ReceiptDynamoClient(aws.table_name, counting, sleep=lambda _: None)
    dynamo.put_many(lines[:-5])  # the last five are never written
    wanted = [_key(line) for line in reversed(lines)] + [_key(lines[0])]

    found = dynamo.get_items(wanted)

    expected = [line.line_id for line in reversed(lines[:-5])] + [1]
    assert [ReceiptLine.from_item(item).line_id for item in found] == expected
    assert counting.requested == [100, 100, 30], "at most 100 keys per BatchGetItem"


def test_get_items_retries_unprocessed_keys_with_growing_backoff(aws):
    lines = _lines(120)
    waits = []
    flaky = DropsHalfOfEachGet(aws.dynamodb, times=3)
    dynamo = ReceiptDynamoClient(aws.table_name, flaky, sleep=waits.append)
    dynamo.put_many(lines)

    found = dynamo.get_items([_key(line) for line in lines])

    assert [ReceiptLine.from_item(item).line_id for item in found] == list(
        range(1, 121)
    )
    # 100 keys: 50 unprocessed, then 25, then 13; then the remaining 20 keys.
    assert flaky.requested == [100, 50, 25, 13, 20]
    assert waits == sorted(waits) and waits[0] < waits[-1] and len(waits) == 3


def test_get_items_gives_up_with_a_clear_error(aws):
    dynamo = ReceiptDynamoClient(
        aws.table_name,
        DropsHalfOfEachGet(aws.dynamodb, times=99),
        sleep=lambda _: None,
    )
    lines = _lines(200)
    dynamo.put_many(lines)
    with pytest.raises(
        UnprocessedItemsError, match="keys stayed unprocessed after 8 attempts"
    ):
        dynamo.get_items([_key(line) for line in lines])


def test_put_many_backs_off_longer_after_each_unprocessed_batch(aws):
    waits = []
    flaky = DropsHalfOfEachBatch(aws.dynamodb, times=4)
    dynamo = ReceiptDynamoClient(aws.table_name, flaky, sleep=waits.append)
    assert dynamo.put_many(_lines(20)) == 20
    assert len(waits) == 4 and waits == sorted(waits) and waits[0] < waits[-1]
    assert len(dynamo.list_receipt_lines(IMAGE, 1)) == 20


def test_receipt_lines_and_words_are_read_across_many_query_pages(aws):
    paged = QueriesInPagesOf(aws.dynamodb, limit=2)
    dynamo = ReceiptDynamoClient(aws.table_name, paged, sleep=lambda _: None)
    # Words sort between lines, so some pages hold only words and the filter empties them.
    words = [
        ReceiptWord(IMAGE, 1, line, word, f"w{word}", BOX, 0.9)
        for line in range(1, 8)
        for word in range(1, 4)
    ]
    dynamo.put_many(_lines(7) + words + _lines(3, receipt_id=2))

    lines = dynamo.list_receipt_lines(IMAGE, 1)
    assert [line.line_id for line in lines] == list(range(1, 8))
    assert paged.pages >= 14  # 28 items of receipt 1, two per page
    found_words = dynamo.list_receipt_words(IMAGE, 1)
    assert sorted((w.line_id, w.word_id) for w in found_words) == sorted(
        (w.line_id, w.word_id) for w in words
    )


def test_embedding_statuses_only_move_forward(dynamo):
    (line,) = _lines(1)
    dynamo.put(line)
    target = target_of(line)

    def moves(*statuses):
        return [dynamo.set_embedding_status(target, s) for s in statuses]

    assert moves(EmbeddingStatus.PENDING, EmbeddingStatus.FAILED) == [True, True]
    assert moves(EmbeddingStatus.FAILED, EmbeddingStatus.SUCCESS) == [True, True]
    refused = [
        EmbeddingStatus.FAILED,
        EmbeddingStatus.PENDING,
        EmbeddingStatus.NONE,
        EmbeddingStatus.NOISE,
    ]
    assert moves(*refused) == [False] * len(refused)
    assert moves(EmbeddingStatus.SUCCESS) == [True]  # a redone poll
    assert dynamo.list_receipt_lines(IMAGE, 1)[0].embedding_status is (
        EmbeddingStatus.SUCCESS
    )
    assert [
        x.line_id
        for x in dynamo.list_lines_by_embedding_status(EmbeddingStatus.SUCCESS).items
    ] == [1]
