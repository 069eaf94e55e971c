"""The package and its third-party dependencies import in this environment."""

from decimal import Decimal


def test_receipt_dynamo_and_its_dependencies_import():
    import boto3
    import botocore
    import receipt_dynamo
    from boto3.dynamodb.types import TypeSerializer

    assert boto3.__version__ and botocore.__version__
    assert TypeSerializer().serialize(Decimal("1.5")) == {"N": "1.5"}
    assert receipt_dynamo.ReceiptDynamoClient
