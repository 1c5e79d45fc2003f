"""timeclock agent: runs on each time clock; badge tap → signed punch → encrypted queue → MQTT."""
