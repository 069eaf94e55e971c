"""The receipts table's definition, for tests and for bootstrapping an account."""

from __future__ import annotations

from typing import Any

INDEXES = ("GSI1", "GSI2", "GSI3")
TTL_ATTRIBUTE = "TimeToLive"


def table_definition(table_name: str) -> dict[str, Any]:
    attributes = ["PK", "SK"] + [
        f"{index}{part}" for index in INDEXES for part in ("PK", "SK")
    ]
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"} for name in attributes
        ],
        "KeySchema": [
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": f"{index}PK", "KeyType": "HASH"},
                    {"AttributeName": f"{index}SK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in INDEXES
        ],
    }


def create_table(dynamodb: Any, table_name: str) -> None:
    """Creates the table, waits until it is active and turns on TTL."""
    dynamodb.create_table(**table_definition(table_name))
    dynamodb.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    dynamodb.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
