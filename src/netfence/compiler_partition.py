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
    meets, live = _meets(len(space)), unclaimed.live
    for number, boxes in numbered_boxes:
        for box in boxes:
            for ident, free in unclaimed.meeting(box, meets):
                common = _intersection(free, box)
                claimed.append((common, number))
                unclaimed.replace(ident, _difference(free, common))
            if limit is not None and max(len(claimed), len(live)) > limit:
                raise TooManyBoxes(max(len(claimed), len(live)))
            if not live:
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
        live, low, shift = self.live, self.low, self.shift
        if old is not None:
            del live[old]
            self.wide.discard(old)
        for piece in pieces:
            ident = self.next_id
            self.next_id += 1
            live[ident] = piece
            first, last = piece[-1]                       # self._span(piece), inline
            first, last = (first - low) >> shift, (last - low) >> shift
            if last - first >= self.WIDE:
                self.wide.add(ident)
            elif first == last:
                self.buckets.setdefault(first, []).append(ident)
            else:
                for bucket in range(first, last + 1):
                    self.buckets.setdefault(bucket, []).append(ident)

    def meeting(self, box, meets):
        """(id, box) of the unclaimed boxes that meet `box` (meets(free, box): see
        _meets), in the order of their ids (a copy: the caller replaces some while it
        walks them)."""
        live = self.live
        first, last = self._span(box)
        if last - first >= self.WIDE:
            idents = live                             # dict order: ascending ids
        else:
            idents = {i for b in range(first, last + 1) for i in self.buckets.get(b, ())
                      if i in live}
            idents.update(self.wide)                  # (the wide set holds live ids only)
            for bucket in range(first, last + 1):     # drop the dead ids as we go
                if bucket in self.buckets:
                    self.buckets[bucket] = [i for i in self.buckets[bucket] if i in live]
            idents = sorted(idents)
        return [(i, live[i]) for i in idents if meets(live[i], box)]

    def boxes(self):
        return [self.live[i] for i in sorted(self.live)]


def _meets(dims):
    """Whether two boxes of `dims` fields meet, as one expression: the test runs for
    every unclaimed box near each rule box (most pairs do not meet: the selective
    fields, port and address, last in the key, are tested first)."""
    def meets_any(first, second):
        for (low1, high1), (low2, high2) in zip(reversed(first), reversed(second)):
            if low1 > high2 or low2 > high1:
                return False
        return True
    return _MEETS.get(dims, meets_any)


_MEETS = {
    1: lambda a, b: a[0][0] <= b[0][1] and b[0][0] <= a[0][1],
    2: lambda a, b: (a[1][0] <= b[1][1] and b[1][0] <= a[1][1]
                     and a[0][0] <= b[0][1] and b[0][0] <= a[0][1]),
    3: lambda a, b: (a[2][0] <= b[2][1] and b[2][0] <= a[2][1]
                     and a[1][0] <= b[1][1] and b[1][0] <= a[1][1]
                     and a[0][0] <= b[0][1] and b[0][0] <= a[0][1]),
    4: lambda a, b: (a[3][0] <= b[3][1] and b[3][0] <= a[3][1]
                     and a[2][0] <= b[2][1] and b[2][0] <= a[2][1]
                     and a[1][0] <= b[1][1] and b[1][0] <= a[1][1]
                     and a[0][0] <= b[0][1] and b[0][0] <= a[0][1]),
}


def _intersection(first, second):
    """The common box of two boxes that meet."""
    return tuple((max(low1, low2), min(high1, high2))
                 for (low1, high1), (low2, high2) in zip(first, second))


def _difference(box, inner):
    """box minus inner (inside it): at most two pieces per dimension."""
    pieces, current = [], list(box)
    for dim, ((low, high), (inner_low, inner_high)) in enumerate(zip(box, inner)):
        if low < inner_low:
            current[dim] = (low, inner_low - 1)
            pieces.append(tuple(current))
        if inner_high < high:
            current[dim] = (inner_high + 1, high)
            pieces.append(tuple(current))
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
        key = (number, box[:dim] + box[dim + 1:])
        group = groups.get(key)
        if group is None:
            groups[key] = [box]
        else:
            group.append(box)
    merged = []
    for (number, _), boxes in groups.items():
        if len(boxes) == 1:                   # most boxes: nothing to join
            merged.append((boxes[0], number))
            continue
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
