"""FileSink reserves disk ahead of the data, never changing what the file holds."""

import os

from worker.sink import PREALLOC_BYTES, FileSink


def test_reservation_keeps_the_size_and_is_given_back_at_finish(tmp_path):
    path = tmp_path / "r.wav"
    sink = FileSink(str(path))
    sink.pwrite(b"\x01" * 8000, 44)
    sink.pwrite(b"\x02" * 44, 0)
    # Mid-recording (what a crash would leave): the length is exactly what was written.
    assert os.stat(path).st_size == 8044
    if sink._reserved > 0:  # file systems without fallocate simply allocate on write
        assert os.stat(path).st_blocks * 512 >= PREALLOC_BYTES
    sink.pwrite(b"\x03" * (3 * PREALLOC_BYTES), 8044)  # a write past the reservation
    assert os.stat(path).st_size == 8044 + 3 * PREALLOC_BYTES
    size = sink.finish()
    st = os.stat(path)
    assert size == st.st_size == 8044 + 3 * PREALLOC_BYTES
    # Nothing reserved past the end survives finish(): at most the last block's slack.
    assert st.st_blocks * 512 < st.st_size + 2 * 4096
    data = path.read_bytes()
    assert data[:44] == b"\x02" * 44 and data[44:8044] == b"\x01" * 8000 and set(data[8044:]) == {3}
