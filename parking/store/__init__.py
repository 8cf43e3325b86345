"""The ledger's storage: the port (``port``), the adapters (``sqlite``, ``postgres``), what
they share (``common``), row <-> domain mapping (``rows``) and opening one (``engine``)."""
