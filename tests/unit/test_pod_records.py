"""The pod recorder (which pod got which address, from the CNI requests a node answered) and
the CNI journal it reads what it could not record at once from."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tartan.backends.log import Log
from tartan.backends.pod_records import PodRecorder
from tartan.cni import journal
from tartan.ipam.lease import StoreUnavailable
from tartan.ipam.lease_memory import MemoryLeaseStore

RESULT = json.dumps({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.5/24"}]})


def env(container: str = "c1", pod: str = "a", ns: str = "x") -> dict[str, str]:
    return {"CNI_CONTAINERID": container, "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/p",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"}


class FlakyStore(MemoryLeaseStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def put_object(self, kind, key, value) -> None:
        if self.down:
            raise StoreUnavailable("etcd request failed: UNAVAILABLE")
        super().put_object(kind, key, value)

    def delete_object(self, kind, key) -> bool:
        if self.down:
            raise StoreUnavailable("etcd request failed: UNAVAILABLE")
        return super().delete_object(kind, key)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


def recorder(store, tmp_path: Path, out: io.StringIO | None = None) -> PodRecorder:
    return PodRecorder(store, "node1", Log(out or io.StringIO()), str(tmp_path / "journal"))


def records(store) -> dict:
    return store.list_objects()[0]["podips"]


def test_an_add_is_recorded_and_its_del_forgets_it_but_not_a_newer_sandboxs(store, tmp_path):
    rec = recorder(store, tmp_path)
    rec.served("ADD", env("c1"), 0, RESULT)
    assert records(store) == {"x/a": {"ips": ["10.244.1.5"], "node": "node1",
                                      "containerID": "c1", "ifname": "eth0"}}
    rec.served("ADD", env("c2"), 0, RESULT)  # the pod's new sandbox
    rec.served("DEL", env("c1"), 0, "")  # the old one's late DEL
    assert records(store)["x/a"]["containerID"] == "c2"
    rec.served("DEL", env("c2"), 0, "")
    assert records(store) == {}


def test_requests_not_from_kubelet_or_failed_record_nothing(store, tmp_path):
    rec = recorder(store, tmp_path)
    rec.served("ADD", {"CNI_CONTAINERID": "c1"}, 0, RESULT)
    rec.served("ADD", env(), 7, "")
    assert records(store) == {}


def test_a_record_the_store_refuses_is_journaled_and_recorded_by_a_later_drain(store, tmp_path):
    out = io.StringIO()
    rec = recorder(store, tmp_path, out)
    store.down = True
    rec.served("ADD", env(), 0, RESULT)
    assert "pod.not_recorded" in out.getvalue() and "retry=" in out.getvalue()
    assert len(journal.entries(rec.journal_dir)) == 1
    assert rec.drain() == 0  # still down: kept
    assert len(journal.entries(rec.journal_dir)) == 1
    store.down = False
    assert rec.drain() == 1
    assert records(store)["x/a"]["ips"] == ["10.244.1.5"]
    assert journal.entries(rec.journal_dir) == []


def test_the_journal_of_requests_answered_without_an_agent_is_recorded_in_order(store,
                                                                                tmp_path):
    rec = recorder(store, tmp_path)
    folder = rec.journal_dir
    assert journal.note("ADD", env("c1", "a"), 0, RESULT, folder)
    assert journal.note("ADD", env("c2", "b"), 0, RESULT, folder)
    assert journal.note("DEL", env("c1", "a"), 0, "", folder)  # a came and went
    assert not journal.note("ADD", env(), 1, "", folder)  # failed: nothing to record
    assert not journal.note("CHECK", env(), 0, "", folder)
    assert not journal.note("ADD", {"CNI_CONTAINERID": "c9"}, 0, RESULT, folder)
    assert [e.command for e in journal.entries(folder)] == ["ADD", "ADD", "DEL"]
    assert rec.drain() == 3
    assert list(records(store)) == ["x/b"]
    assert journal.entries(folder) == []


def test_the_journal_keeps_only_what_recording_needs_and_drops_what_it_cannot_read(tmp_path):
    folder = tmp_path / "journal"
    secret = {**env(), "CNI_PATH": "/opt/cni/bin", "SOMETHING": "else"}
    journal.note("ADD", secret, 0, RESULT, folder)
    (folder / "0000-bad.json").write_text("{cut sh")
    (folder / "note.txt").write_text("not an entry")
    (entry,) = journal.entries(folder)
    assert set(entry.env) == {"CNI_ARGS", "CNI_CONTAINERID", "CNI_IFNAME"}
    assert not (folder / "0000-bad.json").exists() and (folder / "note.txt").exists()
    assert oct(entry.path.stat().st_mode & 0o777) == "0o600"


def test_a_journal_that_cannot_be_written_never_fails_the_request(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert journal.note("ADD", env(), 0, RESULT, blocked / "journal") is False
    assert journal.entries(tmp_path / "missing") == []


def test_plugins_find_the_journal_through_their_environment():
    assert journal.plugin_dir({}) == journal.DEFAULT_DIR
    assert journal.plugin_dir({journal.DIR_ENV: "/tmp/j"}) == "/tmp/j"
