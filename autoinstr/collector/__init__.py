"""The autoinstr collector: a WSGI application that receives span batches from agents on many hosts
(msgpack at /v1/spans, OTLP/HTTP at /v1/traces) and stores them in the SQLite span store that
`autoinstr report` reads. Run it with `autoinstr collector` (served by waitress).

    ingest.py   decoding and strict validation of untrusted bodies (pure functions, no I/O)
    app.py      the WSGI application: routing, auth, body limits, counters, the store writer
    serve.py    the `autoinstr collector` entry point (waitress)
"""
