"""timeclock collector: verify punches, record them in the hash-chained ledger, serve HR/audit."""
