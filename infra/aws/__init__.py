"""The AWS home's deployment: SAM template, Step Functions definitions, build step (docs/aws.md)."""
