"""Finding a release by name, for every module that takes product and version from a caller.

Names are checked first (Invalid with the wire format's code), then a missing
release answers NotFound ``unknown_product`` or ``unknown_release``.  Channels,
rollouts, checkouts and garbage collection look releases up here;
``cas/releases.py`` (publishing and lifecycle) re-exports ``get_release``.
"""
from __future__ import annotations

from casformat.errors import DocumentError
from casformat.paths import check_name

from .errors import NotFound, from_document
from .metadata import Release
from .repo import Repo


def check_release_names(product: str, version: str) -> None:
    """Refuse a product or version name the wire format does not allow."""
    try:
        check_name("product", product)
        check_name("version", version)
    except DocumentError as exc:
        raise from_document(exc) from None


def get_release(repo: Repo, product: str, version: str) -> Release:
    """The release, or NotFound ``unknown_product`` / ``unknown_release``."""
    check_release_names(product, version)
    release = repo.meta.get_release(product, version)
    if release is None:
        if not repo.meta.product_exists(product):
            raise NotFound(f"unknown product {product!r}", code="unknown_product")
        raise NotFound(f"unknown release {product} {version}", code="unknown_release")
    return release
