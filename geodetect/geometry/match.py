"""Greedy matching of detections to reference objects, as COCO scores them: detections
in rank order (best score first) each take the free object they overlap most, when by
at least the threshold."""

from __future__ import annotations

import numpy as np


def greedy_match(
    det: np.ndarray,
    ref: np.ndarray,
    iou: np.ndarray,
    *,
    rank: np.ndarray,
    n_ref: int,
    thresholds: np.ndarray | list[float],
) -> np.ndarray:
    """Match from candidate pairs, at each threshold.

    Args:
        det, ref: int [P], the detection and reference index of each candidate pair
            (pairs that cannot match, e.g. of two classes, left out).
        iou: float [P], the pair's overlap.
        rank: int [N], each detection's position in score order (0: the best).
        n_ref: how many reference objects there are.
        thresholds: the IoU thresholds [T].

    Returns:
        int64 [T, N]: the reference index each detection matched at each threshold, -1
        for none. A detection takes, among the objects no better-ranked detection took,
        the one it overlaps most (ties: the pair listed first).
    """
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    matches = np.full((len(thresholds), len(rank)), -1, dtype=np.int64)
    if len(det) == 0:
        return matches
    # Group pairs by detection rank, best IoU first, so each detection scans its own
    # candidates in order and stops at the first one that is free.
    by = np.lexsort((-np.asarray(iou), rank[det]))
    det, ref, iou = det[by], ref[by], np.asarray(iou)[by]
    pair_rank = rank[det]
    starts = np.flatnonzero(np.r_[True, pair_rank[1:] != pair_rank[:-1]])
    ends = np.r_[starts[1:], len(by)]
    groups = list(zip(starts.tolist(), ends.tolist(), strict=True))
    det_list, ref_list, iou_list = det.tolist(), ref.tolist(), iou.tolist()
    for k, threshold in enumerate(thresholds.tolist()):
        claimed = bytearray(n_ref)
        row = matches[k]
        for start, end in groups:
            for p in range(start, end):
                if iou_list[p] < threshold:
                    break
                if not claimed[ref_list[p]]:
                    claimed[ref_list[p]] = 1
                    row[det_list[p]] = ref_list[p]
                    break
    return matches
