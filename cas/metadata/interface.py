"""``Metadata``: the one interface the server calls for everything it records.

It holds every query once, grouped by the data they own, each group a class of
its own module composed here:

==============================  =============================================================
``roots.RootQueries``           root documents
``releases.ReleaseQueries``     products, releases, file entries, lifecycle events
``channels.ChannelQueries``     channel documents, versions ever offered, the channel counter
``uploads.UploadQueries``       resumable uploads in progress
``deltajobs.DeltaJobQueries``   delta build jobs, recipes, planned release pairs
``bundles.BundleQueries``       bundles of a release pair
``gc.GcQueries``                garbage collection's tombstones and runs
``reports.ReportQueries``       clients' update reports
``rollouts.RolloutQueries``     rollouts and their events
``webhooks.WebhookQueries``     the webhook outbox
``policies.PolicyQueries``      channels' version compatibility policies
``pins.PinQueries``             clients pinned to a release on a channel, and their events
``gauges.GaugeQueries``         aggregates ``/metrics`` reads at each scrape
==============================  =============================================================

The queries are written in the SQL that SQLite and PostgreSQL share; a backend
(``cas/metadata/sqlite.py``, ``cas/metadata/postgres.py``) supplies only what
``MetadataBackend`` (``cas/metadata/backend.py``) asks for.
"""
from __future__ import annotations

from .bundles import BundleQueries
from .channels import ChannelQueries
from .deltajobs import DeltaJobQueries
from .gauges import GaugeQueries
from .gc import GcQueries
from .pins import PinQueries
from .policies import PolicyQueries
from .releases import ReleaseQueries
from .reports import ReportQueries
from .rollouts import RolloutQueries
from .roots import RootQueries
from .uploads import UploadQueries
from .webhooks import WebhookQueries


class Metadata(RootQueries, ReleaseQueries, ChannelQueries, UploadQueries, DeltaJobQueries, BundleQueries,
               GcQueries, ReportQueries, RolloutQueries, WebhookQueries, PolicyQueries, PinQueries,
               GaugeQueries):
    """Every query, once; abstract until a backend supplies connections and transactions."""
