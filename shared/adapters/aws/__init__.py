"""AWS adapters (boto3): S3 StateStore and BlobStore, SQS Queue."""
