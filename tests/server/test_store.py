"""JSON-lines logs in the artifact store (mfl_server.store)."""

from __future__ import annotations

import json

from mfl_server.store import DailyJsonl, process_file_name, utc_day

DAY1 = 1764288000.0  # 2025-11-28T00:00:00Z


def test_lines_go_to_the_utc_day_of_their_timestamp(tmp_path):
    log = DailyJsonl(tmp_path / "predictions", "host-1.jsonl")
    log.append(b'{"n":1}\n', DAY1 + 86399.9)
    log.append(b'{"n":2}\n', DAY1 + 86400.0)
    log.append(b'{"n":3}\n', DAY1 + 86400.5)
    log.close()
    first = tmp_path / "predictions" / "date=2025-11-28" / "host-1.jsonl"
    second = tmp_path / "predictions" / "date=2025-11-29" / "host-1.jsonl"
    assert [json.loads(line)["n"] for line in first.read_text().splitlines()] == [1]
    assert [json.loads(line)["n"] for line in second.read_text().splitlines()] == [2, 3]


def test_lines_are_in_the_file_before_append_returns(tmp_path):
    log = DailyJsonl(tmp_path, "h-1.jsonl")
    log.append(b'{"n":1}\n', DAY1)
    assert log.path.read_bytes() == b'{"n":1}\n'  # no close, no flush call
    log.close()


def test_a_torn_last_line_is_ended_before_appending(tmp_path):
    path = tmp_path / "date=2025-11-28" / "h-1.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"n":1}\n{"n":2, "tor')
    log = DailyJsonl(tmp_path, "h-1.jsonl")
    log.append(b'{"n":3}\n', DAY1 + 5)
    log.close()
    assert path.read_bytes().splitlines()[-1] == b'{"n":3}'


def test_file_names_are_host_and_pid():
    assert process_file_name("pod-a/b", 7) == "pod-a_b-7.jsonl"
    assert utc_day(DAY1) == "2025-11-28"
