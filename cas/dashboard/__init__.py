"""The operator dashboard's figures, computed from the metadata and object store.

Every view of the dashboard page (``cas/http/static/dashboard.*``) is one JSON
document built in ``views`` and served under ``/v1/admin/dashboard/...``
(``cas/http/dashboard.py``); ``cas stats`` and ``cas dashboard`` print the same
documents.  Nothing here writes to the metadata: only read methods of the
metadata interface are used, so another backend serves the same figures.

* ``views``: the four documents -- overview, deltas, channels, health;
* ``figures``: per-process caches of what only changes with releases and objects
  (manifests, dedup figures, complete deltas, the store walk) and ``store_stats``;
* ``fsck``: the record of the last ``cas fsck`` (``STORE/fsck-last.json``);
* ``rates``: request and error rates sampled from the server's Prometheus counters.
"""
