"""deltacas thin update client: ``client.updater.Updater`` and ``cas-client`` (docs/client.md)."""
