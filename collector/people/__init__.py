"""The people directory (issue 12): employees and badges as ledger entries, their projection,
CSV import and the lookups the API, the CLI and the exports use.

A layer beside records and access (pyproject's import contract: ``cli > service > api >
records | access | ingest | fleet | people > ledger``). The badge resolution every punch read
uses lives below, in collector.ledger.people_tables, so records' exports can use it too.
"""
