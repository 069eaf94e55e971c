"""The compaction lock of each collection: a lease with a fencing check."""

from __future__ import annotations

import time

from botocore.exceptions import ClientError

from receipt_dynamo.client.codec import serialize
from receipt_dynamo.client.table import Table, is_conditional_failure
from receipt_dynamo.entities import CompactionLock, lock_key


class CompactionLocks(Table):
    def get_lock(self, collection: str) -> CompactionLock | None:
        item = self._get(lock_key(collection))
        return CompactionLock.from_item(item) if item else None

    def acquire_lock(
        self,
        collection: str,
        owner: str,
        ttl_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Takes the lock if it is free, expired, or already ours."""
        now = time.time() if now is None else now
        lock = CompactionLock(
            collection, owner, expires=now + ttl_seconds, heartbeat=now
        )
        try:
            self._dynamodb.put_item(
                TableName=self.table_name,
                Item=serialize(lock.to_item()),
                ConditionExpression="attribute_not_exists(PK) OR expires < :now OR #owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize({":now": now, ":owner": owner}),
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def refresh_lock(
        self,
        collection: str,
        owner: str,
        ttl_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Extends the lock only while it is still ours and unexpired: the fencing check."""
        now = time.time() if now is None else now
        expires = now + ttl_seconds
        try:
            self._dynamodb.update_item(
                TableName=self.table_name,
                Key=serialize(lock_key(collection)),
                UpdateExpression="SET expires = :expires, heartbeat = :now, TimeToLive = :ttl",
                ConditionExpression="#owner = :owner AND expires >= :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize(
                    {
                        ":expires": expires,
                        ":now": now,
                        ":ttl": int(expires) + CompactionLock.TTL_GRACE_SECONDS,
                        ":owner": owner,
                    }
                ),
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True

    def release_lock(self, collection: str, owner: str) -> bool:
        try:
            self._dynamodb.delete_item(
                TableName=self.table_name,
                Key=serialize(lock_key(collection)),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=serialize({":owner": owner}),
            )
        except ClientError as error:
            if is_conditional_failure(error):
                return False
            raise
        return True
