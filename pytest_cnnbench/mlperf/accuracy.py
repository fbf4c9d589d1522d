"""Top-1 from LoadGen's accuracy log, as MLPerf's ``accuracy-imagenet.py`` computes it.

``mlperf_log_accuracy.json`` is a list of ``{"seq_id", "qsl_idx", "data"}``, ``data`` the SUT's
response bytes in hex. As accuracy-imagenet.py: samples are de-duplicated by ``qsl_idx`` (LoadGen
may issue one twice), the first value of the decoded data is the predicted class, and top-1 is
correct over seen. The SUT here answers each sample with its predicted class as one int32
(accuracy-imagenet.py's ``--dtype int32``). Pure: numpy only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class AccuracyLogError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class LoadGenAccuracy:
    top1: float
    good: int
    total: int
    empty: int  # samples answered with no data (the backend failed on them)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def top1_from_entries(entries: Sequence[dict[str, Any]], labels: Sequence[int], dtype: Any = np.int32) -> LoadGenAccuracy:
    seen: set[int] = set()
    good = empty = 0
    for entry in entries:
        idx = int(entry["qsl_idx"])
        if idx in seen:  # de-dupe in case loadgen sends the same image multiple times
            continue
        seen.add(idx)
        if not (0 <= idx < len(labels)):
            raise AccuracyLogError(f"qsl_idx {idx} is outside the {len(labels)} labels")
        data = np.frombuffer(bytes.fromhex(entry.get("data") or ""), dtype)
        if data.size == 0:
            empty += 1
            continue
        if int(labels[idx]) == int(data[0]):
            good += 1
    if not seen:
        raise AccuracyLogError("LoadGen's accuracy log holds no samples")
    return LoadGenAccuracy(good / len(seen), good, len(seen), empty)


def top1_from_log(path: Path, labels: Sequence[int]) -> LoadGenAccuracy:
    try:
        entries = json.loads(Path(path).read_text())
    except OSError as exc:
        raise AccuracyLogError(f"LoadGen wrote no accuracy log ({path}: {exc.strerror or exc})") from None
    except ValueError as exc:
        raise AccuracyLogError(f"LoadGen's accuracy log {path} is not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise AccuracyLogError(f"LoadGen's accuracy log {path} is not a list of samples")
    return top1_from_entries(entries, labels)
