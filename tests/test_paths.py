"""casformat/paths.py, casformat/manifests.py and casformat/roots.py: pure validation rules."""
from __future__ import annotations

import pytest

from cas.keys import root_signed
from cas.signing import add_signature, generate_key, sign
from casformat.errors import DocumentError, InvalidPath, RollbackAttack, SignatureError
from casformat.manifests import manifest_problems
from casformat.paths import check_name, check_path, check_tree, resolve_symlink
from casformat.roots import verify_first_root, verify_next_root

D = "a" * 64


@pytest.mark.parametrize("path", ["bin/app", "a", "a/b/c.txt", "é/ü", "..a", "a..", ".hidden/x", "a b"])
def test_good_paths(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize("path", ["", "/abs", "../x", "a/../b", "a/..", "..", ".", "./a", "a/./b", "a//b",
                                  "a/", "a\x00b", "a\\b", "a\nb", "x" * 256, "a/" * 2100 + "b", "\ud800",
                                  7, None])
def test_bad_paths(path: object) -> None:
    with pytest.raises(InvalidPath):
        check_path(path)


@pytest.mark.parametrize("name", ["app", "1.2.0", "1.2.0-rc.1+build", "A_b"])
def test_good_names(name: str) -> None:
    assert check_name("version", name) == name


@pytest.mark.parametrize("name", ["", "..", ".", "-x", "a/b", "a b", "a\x00", ".x", "x" * 129, 1])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidPath):
        check_name("version", name)


@pytest.mark.parametrize("link,target,where", [("lib/a.so", "a.so.1", "lib/a.so.1"),
                                               ("a/b/c", "../../x", "x"),
                                               ("a", "b/../c", "c")])
def test_symlinks_inside(link: str, target: str, where: str) -> None:
    assert resolve_symlink(link, target) == where


@pytest.mark.parametrize("link,target", [("a", "../x"), ("a/b", "../../etc"), ("a", "/etc/passwd"),
                                         ("a", ""), ("a", "x\x00"), ("a", "x\\y"), ("a/b", "c/../../.."),
                                         ("a", "\udc80"), ("a", 5)])
def test_symlinks_escaping_or_bad(link: str, target: object) -> None:
    with pytest.raises(InvalidPath):
        resolve_symlink(link, target)


def test_check_tree_collisions() -> None:
    assert check_tree([("a", "file", None), ("b/c", "file", None), ("l", "symlink", "b")]) == []
    assert any("duplicate" in p for p in check_tree([("a", "file", None), ("a", "file", None)]))
    assert any("is a file" in p for p in check_tree([("a", "file", None), ("a/b", "file", None)]))
    # Order does not matter.
    assert any("is a file" in p for p in check_tree([("a/b/c", "file", None), ("a", "file", None)]))
    assert any("below the symlink" in p for p in check_tree([("l", "symlink", "d"), ("l/x", "file", None)]))
    folded = [("README", "file", None), ("readme", "file", None)]
    assert check_tree(folded) == []
    assert any("case" in p for p in check_tree(folded, casefold=True))
    # Every problem is reported, not only the first.
    many = check_tree([("../x", "file", None), ("a\\b", "file", None), ("s", "symlink", "/etc")])
    assert len(many) == 3


def test_check_tree_symlink_chains() -> None:
    # Each link alone looks inside, but t -> d/s/.. goes through d/s -> .. to the tree's parent.
    chained = [("d/s", "symlink", ".."), ("t", "symlink", "d/s/..")]
    assert any("through other symlinks" in p for p in check_tree(chained))
    deeper = [("d/s", "symlink", ".."), ("t", "symlink", "d/s/../../etc/passwd")]
    assert any("through other symlinks" in p for p in check_tree(deeper))
    via_abs = [("a/b", "symlink", "../c"), ("c", "symlink", "/etc")]
    assert any("absolute" in p for p in check_tree(via_abs))
    fine = [("lib/x.so", "symlink", "x.so.1"), ("lib/x.so.1", "symlink", "x.so.1.2"),
            ("lib/x.so.1.2", "file", None), ("bin/docs", "symlink", "../share/doc"), ("share/doc/r", "file", None),
            ("d/up", "symlink", ".."), ("top", "symlink", "d/up/lib/x.so")]
    assert check_tree(fine) == []
    # A loop reaches nothing (ELOOP); it is not an escape.
    assert check_tree([("a", "symlink", "b"), ("b", "symlink", "a")]) == []


def test_check_tree_casefold_file_over_directory() -> None:
    clash = [("Docs", "file", None), ("docs/a", "file", None)]
    assert check_tree(clash) == []
    assert any("is a file" in p for p in check_tree(clash, casefold=True))


def _manifest(files: list) -> dict:
    return {"schema": 1, "product": "app", "version": "1.0.0", "created": "2026-01-01T00:00:00Z",
            "files": files}


def _file(path: str, **kw: object) -> dict:
    return {"path": path, "type": "file", "mode": 0o644, "size": 1, "blake3": D, "sha256": D, **kw}


def test_manifest_problems() -> None:
    assert manifest_problems(_manifest([_file("a"), {"path": "l", "type": "symlink", "target": "a"}])) == []
    cases = {
        "unknown type": [{**_file("a"), "type": "dir"}],
        "fields must be exactly": [{**_file("a"), "extra": 1}],
        "mode": [_file("a", mode=-1)],
        "setuid": [_file("a", mode=0o4755)],
        "size": [_file("a", size=True)],
        "hex": [_file("a", blake3="A" * 64)],
        "must be an object": ["a"],
    }
    for needle, files in cases.items():
        problems = manifest_problems(_manifest(files))
        assert any(needle in p for p in problems), (needle, problems)
    assert manifest_problems([]) == ["manifest 'signed' must be an object"]
    assert any("schema" in p for p in manifest_problems({**_manifest([]), "schema": 2}))
    assert any("unknown manifest fields" in p for p in manifest_problems({**_manifest([]), "x": 1}))
    assert any("created" in p for p in manifest_problems({**_manifest([]), "created": "yesterday"}))
    assert any("files must be a list" in p for p in manifest_problems({**_manifest([]), "files": {}}))


# ------------------------------------------------------------------ roots

def _root(version: int, root_keys: list, signers: list, threshold: int = 1) -> dict:
    other = generate_key()
    return sign(root_signed(version, {"root": root_keys, "release": [other], "channel": [other]},
                            {"root": threshold}), signers)


def test_first_root_must_be_self_signed() -> None:
    k = generate_key()
    assert verify_first_root(_root(1, [k], [k])).version == 1
    with pytest.raises(SignatureError):
        verify_first_root(_root(1, [k], [generate_key()]))
    with pytest.raises(SignatureError):
        verify_first_root(_root(1, [k], []))


def test_root_rotation_needs_old_and_new_keys() -> None:
    old, new = generate_key(), generate_key()
    v1 = verify_first_root(_root(1, [old], [old]))
    v2 = verify_next_root(v1, _root(2, [new], [old, new]))
    assert v2.version == 2 and list(v2.role("root").keys)  # new key trusted now
    # Missing the old key's signature: refused (an attacker with only the new key).
    with pytest.raises(SignatureError, match="v1 root keys"):
        verify_next_root(v1, _root(2, [new], [new]))
    # Missing the new key's signature: refused (the new root must be usable).
    with pytest.raises(SignatureError):
        verify_next_root(v1, _root(2, [new], [old]))
    # Skipped and repeated versions.
    with pytest.raises(RollbackAttack):
        verify_next_root(v1, _root(3, [new], [old, new]))
    with pytest.raises(RollbackAttack):
        verify_next_root(v1, _root(1, [old], [old]))
    with pytest.raises(RollbackAttack):
        verify_next_root(v2, _root(1, [old], [old]))
    # The chain continues from v2 with the v2 keys only.
    newer = generate_key()
    with pytest.raises(SignatureError):
        verify_next_root(v2, _root(3, [newer], [old, newer]))
    assert verify_next_root(v2, _root(3, [newer], [new, newer])).version == 3


def test_root_threshold_two() -> None:
    a, b, c = generate_key(), generate_key(), generate_key()
    v1 = verify_first_root(_root(1, [a, b], [a, b], threshold=2))
    # Only one of the two old root keys signed: refused.
    with pytest.raises(SignatureError):
        verify_next_root(v1, _root(2, [c], [a, c]))
    # Duplicate signatures by one old key do not make two.
    doubled = _root(2, [c], [a, c])
    doubled["signatures"].append(dict(doubled["signatures"][0]))
    with pytest.raises(SignatureError):
        verify_next_root(v1, doubled)
    assert verify_next_root(v1, add_signature(_root(2, [c], [a, c]), b)).version == 2


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(version=0),
    lambda s: s.update(version=True),
    lambda s: s.update(type="release"),
    lambda s: s["roles"]["root"].update(threshold=5),
    lambda s: s["roles"]["root"].update(threshold=0),
    lambda s: s["roles"]["root"].update(keyids=["f" * 64]),
    lambda s: s["roles"].pop("channel"),
    lambda s: s["keys"].update({"0" * 64: next(iter(s["keys"].values()))}),  # keyid not of its key
])
def test_malformed_roots_refused(mutate) -> None:
    k = generate_key()
    envelope = _root(1, [k], [k])
    signed = envelope["signed"]
    mutate(signed)
    with pytest.raises(DocumentError):
        verify_first_root(sign(signed, [k]))


# --------------------------------------------------------------------------- issue 13: D2, D13, D14

def test_overlong_symlink_target_refused() -> None:
    """D2: a target of 150,000 segments is refused by its length, before any chain is followed."""
    target = "/".join(["a"] * 150_000)
    with pytest.raises(InvalidPath, match="longer than 1024"):
        resolve_symlink("s", target)
    problems = check_tree([("s", "symlink", target), ("a", "symlink", ".")])
    assert len(problems) == 1 and "longer than 1024" in problems[0]


@pytest.mark.timeout(60)
def test_symlink_chain_work_is_bounded_per_tree() -> None:
    """D2: many links that each expand through each other cannot make the check run away:
    the whole tree gets MAX_CHAIN_STEPS of resolution work, then is refused with a reason."""
    deep = "/".join(["d"] * 500)            # 500 real directories: no hop limit ends the walk early
    entries: list[tuple[object, str, object]] = [(deep + "/f", "file", None)]
    entries += [(f"l{i:05d}", "symlink", deep + "/f") for i in range(5000)]
    problems = check_tree(entries)
    assert problems and all("too long to check" in p for p in problems)
    # A realistic tree with chains (lib/x.so -> x.so.1 -> ...) is nowhere near the budget.
    fine = [(f"lib/l{i}.so", "symlink", f"l{i}.so.1") for i in range(2000)]
    fine += [(f"lib/l{i}.so.1", "file", None) for i in range(2000)]
    assert check_tree(fine) == []


def test_casefold_treats_nfc_and_nfd_as_one_name() -> None:
    """D13: on a case-insensitive, normalising file system these two entries are one file."""
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    assert check_tree([(nfc, "file", None), (nfd, "file", None)]) == []
    problems = check_tree([(nfc, "file", None), (nfd, "file", None)], casefold=True)
    assert any("collides" in p for p in problems)
    assert any("collides" in p for p in check_tree([("A/ß", "file", None), ("a/SS", "file", None)], casefold=True))


def test_casefold_resolves_symlink_chains_case_insensitively() -> None:
    """D13: d/x -> .. and t -> d/X/../.. : through d/X (= d/x there) t leaves the tree."""
    chain = [("d/x", "symlink", ".."), ("t", "symlink", "d/X/../..")]
    assert check_tree(chain) == []   # case-sensitive: d/X is no link, t stays inside
    assert any("through other symlinks" in p for p in check_tree(chain, casefold=True))


@pytest.mark.parametrize("char", ["\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\x1b"])
def test_control_characters_refused_in_paths_and_targets(char: str) -> None:
    """D14: DEL, the C1 controls (U+0085 NEL, U+009B CSI) and line separators are controls too."""
    with pytest.raises(InvalidPath, match="control"):
        check_path(f"a{char}b")
    with pytest.raises(InvalidPath, match="control"):
        resolve_symlink("s", f"a{char}b")


def test_path_length_leaves_room_for_the_install_root() -> None:
    """D14: a path every client can install; 4096 bytes is refused (ENAMETOOLONG under any root)."""
    from casformat.paths import MAX_PATH_BYTES, MAX_ROOT_BYTES
    ok = "/".join(["d" * 200] * 10) + "/" + "f" * (MAX_PATH_BYTES - 2010)
    assert len(ok.encode()) == MAX_PATH_BYTES and check_path(ok) == ok
    for bad in (ok + "x", "/".join(["d" * 200] * 20)):
        with pytest.raises(InvalidPath, match="longer than"):
            check_path(bad)
    assert MAX_ROOT_BYTES + MAX_PATH_BYTES + 160 < 4096


def test_rotated_roles_and_channel_trust_after_rotation() -> None:
    """Issue 13, D8 (the pure part): a new root that rotates the channel key makes the client
    forget its channel sequence; one that rotates only the release key does not."""
    from casformat.roots import parse_root, rotated_roles
    from casformat.trust import ChannelState, after_root_update
    root_k, rel, ch, ch2, rel2 = (generate_key() for _ in range(5))
    v1 = parse_root(root_signed(1, {"root": [root_k], "release": [rel], "channel": [ch]}))
    v2 = parse_root(root_signed(2, {"root": [root_k], "release": [rel], "channel": [ch2]}))
    v3 = parse_root(root_signed(3, {"root": [root_k], "release": [rel2], "channel": [ch2]}))
    v4 = parse_root(root_signed(4, {"root": [root_k], "release": [rel2], "channel": [ch2]}, {"root": 1}))
    assert rotated_roles(v1, v2) == {"channel"} and rotated_roles(v2, v3) == {"release"}
    assert rotated_roles(v3, v4) == frozenset()
    stuck = ChannelState(10**12, "f" * 64)
    assert after_root_update(stuck, v1, v2) == ChannelState()
    assert after_root_update(stuck, v2, v3) == stuck
