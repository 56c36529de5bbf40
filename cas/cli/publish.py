"""``cas publish``: scan a tree, sign its manifest, store it here or upload it to a server.

Optionally moves the new release to testing or released and points a channel at it
(the same steps as ``cas release status`` and ``cas channel set``).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from .. import publisher
from ..chunked import ChunkSettings
from ..config import load_config
from ..errors import CasError
from ..trees import scan_tree
from .channel import set_channel
from .command import Subcommands, add_command, add_remote, emit, local_repo, progress_bar, release_keys, remote_of
from .release import move_status

# --status S walks the lifecycle through each of these moves in turn
STATUS_STEPS = {"testing": ["testing"], "released": ["testing", "released"]}


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish ``args.dir`` as ``product version``; prints what was stored and what was deduplicated."""
    show = not args.json and sys.stderr.isatty()
    remote = remote_of(args)
    signing = release_keys(args, None if remote is not None else load_config(args.store).store)
    config = load_config(args.store)
    if args.chunk_min_file_bytes is not None:
        config = replace(config, chunk_min_file_bytes=args.chunk_min_file_bytes)
    tree = scan_tree(Path(args.dir), chunking=ChunkSettings.of(config))
    envelope = publisher.signed_manifest(args.product, args.version, tree, signing)
    if args.cms_cert or args.cms_key:  # enterprise CMS signature (cas/cms_signing.py)
        if not (args.cms_cert and args.cms_key):
            raise CasError("--cms-cert and --cms-key go together", code="bad_request")
        from ..cms_signing import add_cms
        envelope = add_cms(envelope, args.cms_cert, args.cms_key, args.cms_chain)
    with progress_bar(tree.logical_bytes, "storing", show) as advance:
        if remote is None:
            result = publisher.publish_local(local_repo(args), tree, envelope, advance)
        else:
            result = asyncio.run(publisher.publish_remote_async(remote[0], remote[1], tree, envelope,
                                                                args.jobs, advance))
    for status in STATUS_STEPS.get(args.status or "", []):
        if result.status == status or (status == "testing" and result.status == "released"):
            continue
        move_status(args, args.product, args.version, status, "cas publish --status")
        result.status = status
    if args.channel:
        set_channel(args, args.product, args.channel, args.version, None)
    saved = result.logical_bytes - result.uploaded_bytes
    emit(args, result.__dict__,
         f"{'published' if result.created else 'already published'} {result.product} {result.version} "
         f"({result.status}): {result.files} entries, {result.logical_bytes:,} bytes; "
         f"stored {result.uploaded_objects} new objects ({result.uploaded_bytes:,} bytes, "
         f"{saved:,} deduplicated); manifest {result.manifest[:16]}")
    return 0


def register(sub: Subcommands) -> None:
    """``cas publish``."""
    p = add_command(sub, "publish", cmd_publish, help="publish a release tree")
    p.add_argument("dir")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--key", action="append", default=None,
                   help="release key; repeat for a role with a threshold (default: the store's release keys)")
    p.add_argument("--status", choices=["testing", "released"], default=None)
    p.add_argument("--channel", default=None)
    p.add_argument("--jobs", type=int, default=4, help="parallel uploads")
    p.add_argument("--chunk-min-file-bytes", type=int, default=None,
                   help="publish files of at least this size as content-defined chunks "
                        "(default: the store's chunk_min_file_bytes, 128 MiB)")
    p.add_argument("--cms-cert", default=None, help="X.509 code-signing certificate (PEM) for a detached CMS "
                   "signature of the manifest (docs/enterprise-signing.md)")
    p.add_argument("--cms-key", default=None, help="its private key (PEM; passphrase in $CAS_CMS_KEY_PASSWORD)")
    p.add_argument("--cms-chain", default=None, help="intermediate certificates (PEM) to embed in the signature")
    add_remote(p)
