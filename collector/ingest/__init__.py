"""MQTT messages in, ledger entries and receipts out: the pipeline, punch verification,
receipts, checkpoints, alerts and device statuses."""
