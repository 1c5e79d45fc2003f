"""The running collector: its config, its MQTT link and the runner that wires ingest,
checkpoints and the optional API together (``timeclock-collector serve``)."""
