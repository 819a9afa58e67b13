"""The first-match partition of a profile direction's rules into disjoint boxes
(compiler_lookups builds the maps from it). Pure.

A box is one (low, high) range per key field. `partition` walks the rules in order
keeping the still-unclaimed region as disjoint boxes (start: the whole key space);
each rule's box claims its intersection with every unclaimed box it meets, which loses
it (the difference: at most two pieces per field).
"""

from .errors import NetfenceError


class TooManyBoxes(NetfenceError):
    """The partition passed its limit (the caller names the profile)."""


def partition(numbered_boxes, space, limit=None):
    """First match as disjoint boxes: ([(box, rule number)], unclaimed boxes).
    numbered_boxes: [(number, [box, ...])] in rule order; space: the box of every
    possible key. TooManyBoxes as soon as the claimed or the unclaimed boxes pass
    `limit` (a policy that cannot be a map: stop early rather than compute millions of
    boxes)."""
    unclaimed, claimed = _Unclaimed(space), []
    for number, boxes in numbered_boxes:
        for box in boxes:
            for ident, free in unclaimed.meeting(box):
                common = _intersection(free, box)
                if common is None:
                    continue
                claimed.append((common, number))
                unclaimed.replace(ident, _difference(free, common))
            if limit is not None and max(len(claimed), len(unclaimed)) > limit:
                raise TooManyBoxes(max(len(claimed), len(unclaimed)))
            if not len(unclaimed):
                return claimed, []
    return claimed, unclaimed.boxes()


class _Unclaimed:
    """The unclaimed boxes, bucketed by their last field (port or address: the
    selective one) so that a rule's box is tested against the boxes near it, not all
    of them (a profile of many single ports leaves thousands of gaps: scanning them
    all for every box made the partition quadratic, minutes at the limit)."""
    BUCKETS, WIDE = 1024, 32

    def __init__(self, space):
        low, high = space[-1]
        self.low, self.shift = low, max(0, (high - low).bit_length() - 10)
        self.live, self.wide, self.buckets, self.next_id = {}, set(), {}, 0
        self.replace(None, [tuple(space)])

    def _span(self, box):
        low, high = box[-1]
        return (low - self.low) >> self.shift, (high - self.low) >> self.shift

    def replace(self, old, pieces):
        if old is not None:
            del self.live[old]
            self.wide.discard(old)
        for piece in pieces:
            ident, self.next_id = self.next_id, self.next_id + 1
            self.live[ident] = piece
            first, last = self._span(piece)
            if last - first >= self.WIDE:
                self.wide.add(ident)
                continue
            for bucket in range(first, last + 1):
                self.buckets.setdefault(bucket, []).append(ident)

    def meeting(self, box):
        """(id, box) of the unclaimed boxes that may meet `box` (a copy: the caller
        replaces some while it walks them)."""
        first, last = self._span(box)
        if last - first >= self.WIDE:
            idents = set(self.live)
        else:
            idents = {i for b in range(first, last + 1) for i in self.buckets.get(b, ())
                      if i in self.live} | (self.wide & self.live.keys())
            for bucket in range(first, last + 1):     # drop the dead ids as we go
                self.buckets[bucket] = [i for i in self.buckets.get(bucket, ())
                                        if i in self.live]
        return [(i, self.live[i]) for i in sorted(idents)]

    def __len__(self):
        return len(self.live)

    def boxes(self):
        return [self.live[i] for i in sorted(self.live)]


def _intersection(first, second):
    # most pairs do not meet: test the selective fields (port, address) first, cheaply
    for (low1, high1), (low2, high2) in zip(reversed(first), reversed(second)):
        if low1 > high2 or low2 > high1:
            return None
    return tuple((max(low1, low2), min(high1, high2))
                 for (low1, high1), (low2, high2) in zip(first, second))


def _difference(box, inner):
    """box minus inner (inside it): at most two pieces per dimension."""
    pieces, current = [], list(box)
    for dim, ((low, high), (inner_low, inner_high)) in enumerate(zip(box, inner)):
        if low < inner_low:
            pieces.append(tuple(current[:dim] + [(low, inner_low - 1)] + current[dim + 1:]))
        if inner_high < high:
            pieces.append(tuple(current[:dim] + [(inner_high + 1, high)] + current[dim + 1:]))
        current[dim] = (inner_low, inner_high)
    return pieces


def merge_adjacent(claimed):
    """Join boxes of one rule that touch along one dimension and agree on the others
    (fewer elements, shorter listings); repeated while it joins some."""
    dims = len(claimed[0][0]) if claimed else 0
    changed = True
    while changed:
        changed = False
        for dim in range(dims):
            merged = _merge_along(claimed, dim)
            changed = changed or len(merged) < len(claimed)
            claimed = merged
    return claimed


def _merge_along(claimed, dim):
    groups = {}
    for box, number in claimed:
        groups.setdefault((number, box[:dim] + box[dim + 1:]), []).append(box)
    merged = []
    for (number, _), boxes in groups.items():
        boxes.sort(key=lambda b: b[dim])
        run = boxes[0]
        for box in boxes[1:]:
            if box[dim][0] == run[dim][1] + 1:
                run = run[:dim] + ((run[dim][0], box[dim][1]),) + run[dim + 1:]
            else:
                merged.append((run, number))
                run = box
        merged.append((run, number))
    return merged
