"""Node-local copies of stored folders (kd_tune.storage.local_copies), from a real S3-compatible server
(moto, auth on) and from a local folder: one download per node however many fetch at once,
a checksum at fetch, a bounded folder that evicts what no process uses, and its CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kd_tune.storage.local_copies import (
    ENV_FOLDER,
    ENV_MAX_BYTES,
    RECORD,
    CopyError,
    LocalCopies,
    default_local_cache,
    parse_bytes,
)
from kd_tune.storage.location import open_storage

ROOT = Path(__file__).resolve().parents[2]


def stored_folder(storage, key: str, sizes: dict[str, int], seed: int = 0):
    """Folder ``key`` of ``storage`` holding files of ``sizes`` bytes; its Storage and the files' sha256."""
    folder = storage / key
    sums = {}
    for i, (name, size) in enumerate(sizes.items()):
        data = hashlib.shake_256(f"{seed}-{i}".encode()).digest(size)
        folder.write_bytes(name, data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return folder, sums


@pytest.fixture(params=["s3", "local"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(tmp_path / "store" / "teacher_logits")
    s3 = request.getfixturevalue("s3_env")
    return open_storage(s3.uri()) / "teacher_logits"


def record_of(folder: Path) -> dict:
    return json.loads((folder / RECORD).read_text())


def test_a_fetch_downloads_once_checks_and_reuses(storage, tmp_path):
    folder, sums = stored_folder(storage, "k1", {"a.npy": 3000, "b.npy": 10})
    copies = LocalCopies(tmp_path / "local")
    local = copies.fetch(folder, "k1", ["a.npy", "b.npy"], sums)
    assert local == copies.place(folder, "k1") and local.is_relative_to(tmp_path / "local" / "copies")
    assert (local / "a.npy").read_bytes() == folder.read_bytes("a.npy")
    record = record_of(local)
    assert (record["uri"], record["key"], record["downloads"], record["reuses"], record["bytes"]) == \
        (folder.uri, "k1", 1, 0, 3010)
    assert copies.uses(local) == 1 and copies.in_use(local)
    assert copies.fetch(folder, "k1", ["a.npy", "b.npy"], sums) == local
    assert (record_of(local)["downloads"], record_of(local)["reuses"]) == (1, 1)
    assert copies.uses(local) == 2
    copies.release(local)
    copies.release(local)
    assert copies.uses(local) == 0 and not copies.in_use(local)
    [listed] = copies.copies()
    assert (listed.uri, listed.key, listed.bytes, listed.downloads, listed.reuses) == (folder.uri, "k1", 3010, 1, 1)


def test_a_stored_folder_built_again_replaces_its_copy(storage, tmp_path):
    folder, sums = stored_folder(storage, "k1", {"a.npy": 100})
    copies = LocalCopies(tmp_path / "local")
    local = copies.fetch(folder, "k1", ["a.npy"], sums)
    copies.release(local)
    _, new_sums = stored_folder(storage, "k1", {"a.npy": 200}, seed=1)  # rebuilt: other bytes
    assert copies.fetch(folder, "k1", ["a.npy"], new_sums) == local
    assert (local / "a.npy").read_bytes() == folder.read_bytes("a.npy") and len(folder.read_bytes("a.npy")) == 200
    assert record_of(local)["downloads"] == 2 and record_of(local)["sha256"] == new_sums
    copies.release(local)


def test_a_damaged_stored_file_fails_at_fetch_naming_its_uri(storage, tmp_path):
    folder, sums = stored_folder(storage, "k1", {"a.npy": 500, "b.npy": 500})
    data = bytearray(folder.read_bytes("b.npy"))
    data[100] ^= 0xFF  # one flipped byte, same size
    folder.write_bytes("b.npy", bytes(data))
    copies = LocalCopies(tmp_path / "local")
    with pytest.raises(CopyError) as err:
        copies.fetch(folder, "k1", ["a.npy", "b.npy"], sums)
    assert str(err.value).startswith(f"{folder.uri_of('b.npy')} does not hold what was written (sha256 ")
    assert f"recorded {sums['b.npy'][:12]}..." in str(err.value)
    place = copies.place(folder, "k1")
    assert not place.exists() and copies.copies() == []
    assert [p.name for p in place.parent.iterdir() if not p.name.endswith((".lock", ".use"))] == []
    assert copies.uses(place) == 0
    with pytest.raises(CopyError, match=f"{folder.uri_of('c.npy')} cannot be copied to this node"):
        copies.fetch(folder, "k1", ["c.npy"], {})


def fetch_in_threads(copies: LocalCopies, folder, sums: dict[str, str], count: int) -> list[Path]:
    barrier = threading.Barrier(count)
    got: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            barrier.wait()
            got.append(copies.fetch(folder, folder.name, sorted(sums), sums))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return got


def test_concurrent_fetchers_in_threads_download_once(s3_env, tmp_path):
    folder, sums = stored_folder(open_storage(s3_env.uri()), "k1", {"train.npy": 2_000_000, "val.npy": 1000})
    copies = LocalCopies(tmp_path / "local")
    got = fetch_in_threads(copies, folder, sums, 8)
    assert len(set(got)) == 1 and len(got) == 8
    record = record_of(got[0])
    assert (record["downloads"], record["reuses"]) == (1, 7)
    assert copies.uses(got[0]) == 8


FETCH = """
import json, sys
from kd_tune.storage.local_copies import LocalCopies
from kd_tune.storage.location import open_storage
folder = open_storage(sys.argv[1])
sums = json.loads(sys.argv[3])
sys.stdin.readline()  # start together
print(LocalCopies(sys.argv[2]).fetch(folder, folder.name, sorted(sums), sums))
"""


def test_concurrent_fetchers_in_processes_download_once(s3_env, tmp_path):
    folder, sums = stored_folder(open_storage(s3_env.uri()), "k1", {"train.npy": 3_000_000, "val.npy": 1000})
    env = {**s3_env.env(), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", FETCH, folder.uri, str(tmp_path / "local"), json.dumps(sums)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(4)]
    outs = [p.communicate("go\n", timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    places = {out.strip() for out, _ in outs}
    assert places == {str(LocalCopies(tmp_path / "local").place(folder, "k1"))}
    record = record_of(Path(places.pop()))
    assert (record["downloads"], record["reuses"]) == (1, 3)


def test_the_copies_stay_within_their_bound_evicting_unused_ones_least_recently_used_first(tmp_path):
    storage = open_storage(tmp_path / "store" / "teacher_logits")
    copies = LocalCopies(tmp_path / "local", max_bytes=2500)
    folders = {key: stored_folder(storage, key, {"a.npy": 1000}, seed=i) for i, key in enumerate("abcd")}

    def fetch(key: str) -> Path:
        folder, sums = folders[key]
        return copies.fetch(folder, key, ["a.npy"], sums)

    a = fetch("a")
    copies.release(a)
    b = fetch("b")  # b stays in use
    copies.release(fetch("a"))  # a is used again: now b is the least recently used, yet in use
    c = fetch("c")  # 3000 bytes > 2500: the least recently used copy not in use goes: a
    assert not a.exists() and b.exists() and c.exists()
    assert sorted(x.key for x in copies.copies()) == ["b", "c"]
    copies.release(c)
    d = fetch("d")  # b is in use, c is not: c goes
    assert b.exists() and d.exists() and not c.exists()
    assert sum(x.bytes for x in copies.copies()) == 2000
    # Nothing in use beyond the bound: prune(0) spares copies in use only.
    copies.release(d)
    assert [x.key for x in copies.prune(0)] == ["d"]
    assert [x.key for x in copies.copies()] == ["b"]
    copies.release(b)
    assert [x.key for x in copies.prune(0)] == ["b"] and copies.copies() == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_tune.local_copies", *args], capture_output=True, text=True,
                          env={**(env or os.environ), "PYTHONPATH": str(ROOT)}, timeout=60, check=False)


def test_the_cli_lists_and_prunes(s3_env, tmp_path):
    storage = open_storage(s3_env.uri()) / "teacher_logits"
    copies = LocalCopies(tmp_path / "local")
    kept, sums = stored_folder(storage, "kept", {"a.npy": 4000})
    gone, gone_sums = stored_folder(storage, "gone", {"a.npy": 2000}, seed=1)
    in_use = copies.fetch(kept, "kept", ["a.npy"], sums)  # held by this process while the CLI runs
    copies.release(copies.fetch(gone, "gone", ["a.npy"], gone_sums))

    listed = run_cli("list", "--folder", str(tmp_path / "local"), env=s3_env.env())
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == f"2 copies, 6.0 kB in {tmp_path / 'local'}"
    assert any(line.startswith(f"{kept.uri}  key kept  4.0 kB  last used 20") and "downloads 1  reuses 0  in use"
               in line for line in lines)
    assert any(line.startswith(f"{gone.uri}  key gone  2.0 kB") and not line.endswith("in use") for line in lines)

    pruned = run_cli("prune", "--folder", str(tmp_path / "local"), "--keep-bytes", "0", env=s3_env.env())
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines()[0].startswith(f"removed {gone.uri} (key gone, 2.0 kB, last used ")
    assert pruned.stdout.splitlines()[-1] == f"1 removed, 1 left (4.0 kB) in {tmp_path / 'local'}"
    assert in_use.exists() and not copies.place(gone, "gone").exists()
    copies.release(in_use)
    assert run_cli("prune", "--folder", str(tmp_path / "local"), "--keep-bytes", "1K").stdout.startswith(
        f"removed {kept.uri}")
    bad = run_cli("prune", "--folder", str(tmp_path / "local"), "--keep-bytes", "lots")
    assert bad.returncode == 2 and "'lots' is not a size in bytes" in bad.stderr


def test_the_default_folder_and_bound(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_FOLDER, raising=False)
    monkeypatch.delenv(ENV_MAX_BYTES, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_local_cache() == tmp_path / "home" / ".cache" / "kd-tune"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_local_cache() == tmp_path / "xdg" / "kd-tune"
    monkeypatch.setenv(ENV_FOLDER, str(tmp_path / "mine"))
    assert default_local_cache() == tmp_path / "mine" and LocalCopies().folder == tmp_path / "mine"
    assert LocalCopies().max_bytes == 50 * 10**9
    monkeypatch.setenv(ENV_MAX_BYTES, "2.5G")
    assert LocalCopies().max_bytes == 2_500_000_000 and LocalCopies(max_bytes="10M").max_bytes == 10**7
    assert [parse_bytes(t) for t in ("1234", "1k", "3MB", "1T", 7)] == [1234, 1000, 3 * 10**6, 10**12, 7]
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("G")
