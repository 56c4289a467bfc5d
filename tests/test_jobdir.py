"""FileStamp: four stat fields in one int; equal exactly when all four are."""

from __future__ import annotations

import os
import pickle

import hypothesis.strategies as st
from hypothesis import given

from supervisor.jobfiles.jobdir import UNSTAMPED, FileStamp, snapshot

SIZES = st.integers(0, 2**63 - 1)
TIMES = st.integers(-(2**63), 2**63 - 1)  # nanoseconds; before 1970 is negative
INODES = st.integers(0, 2**64 - 1)
FIELDS = st.tuples(SIZES, TIMES, INODES, TIMES)


@given(FIELDS)
def test_fields_read_back(fields):
    stamp = FileStamp(*fields)
    assert (stamp.size, stamp.mtime_ns, stamp.inode, stamp.ctime_ns) == fields
    assert pickle.loads(pickle.dumps(stamp)) == stamp
    assert eval(repr(stamp), {"FileStamp": FileStamp}) == stamp
    assert stamp  # a stamp of an empty file made at the epoch is still a stamp


@given(FIELDS, FIELDS)
def test_equal_exactly_when_every_field_is(a, b):
    assert (FileStamp(*a) == FileStamp(*b)) == (a == b)
    assert (FileStamp(*a) != FileStamp(*b)) == (a != b)
    if a == b:
        assert hash(FileStamp(*a)) == hash(FileStamp(*b))


def test_never_equal_to_a_plain_number():
    stamp = FileStamp(1, 2, 3, 4)
    assert stamp != int(stamp) and int(stamp) != stamp and stamp is not None


def test_snapshot_stamps_what_stat_says(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / ".hidden.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    st = os.stat(tmp_path / "a.json")
    assert snapshot(str(tmp_path)) == {
        str(tmp_path / "a.json"): FileStamp(st.st_size, st.st_mtime_ns, st.st_ino,
                                            st.st_ctime_ns)}


def test_unstamped_snapshot_lists_the_same_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / ".hidden.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    listed = snapshot(str(tmp_path), stamped=False)
    assert listed == {str(tmp_path / "a.json"): UNSTAMPED}
    assert UNSTAMPED != FileStamp.of(os.lstat(tmp_path / "a.json"))  # no file has inode 0
