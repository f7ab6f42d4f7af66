"""perf2bolt's rules for turning branch stacks into traces, in plain Python.

The reference the kernel aggregation (replay_branches) is checked against.
Written from the rules of LLVM BOLT's perf2bolt, not from this project's BPF
code. Line numbers are those of bolt/lib/Profile/DataAggregator.cpp at
llvm/llvm-project commit 00d20e2b9247441bbe5c22e42b492f1abeca9e03 (LLVM
22-era main; counted from the stored text):

- parseBranchSample (1117-1150) reads a sample's entries newest first and
  drops every entry for which ignoreKernelInterrupt (1418-1421) holds,
  `From >= KernelBaseAddr || To >= KernelBaseAddr` with KernelBaseAddr =
  0xffff800000000000 (DataAggregator.h), BEFORE the entries are paired
  (1142-1143: `continue` before `Res.LBR.push_back`).
- parseBranchEvents (1586-1661) counts a sample left with no entry as
  NumSamplesNoLBR (1611-1614) and passes the others to parseLBRSample.
- parseLBRSample (1493-1523) walks the kept entries newest first;
  `TraceTo = NextLBR ? NextLBR->From : Trace::BR_ONLY` (1509): entry i gives
  the trace (From_i, To_i, From of the next newer kept entry), the newest
  gets BR_ONLY; each trace gets TakenCount += 1 and MispredCount +=
  LBR.Mispred (1512-1514). Repeated traces (loops) simply add up in
  TraceMap; nothing is special about duplicates or about the oldest entry.
- parseLBREntry (1027-1089): the flag field is one character, 'M' means
  mispredicted (1072); 'P' and '-' do not (a '-' only warns, 1074-1078).
- The Intel Skylake workaround (1500-1508, 1617-1621: drop the two newest
  entries of 32-entry stacks) applies only to BAT (already BOLTed)
  binaries, never to a profile of an original binary, so it is not here.

Only `max_depth` is this project's: hardware records at most 64 entries,
and longer replayed stacks keep their newest 64 (replay.pack_stacks).
"""

KERNEL_BASE_ADDR = 0xffff800000000000   # DataAggregator.h, KernelBaseAddr
BR_ONLY = 0xffffffffffffffff            # Trace::BR_ONLY: no fall-through known
MAX_DEPTH = 64                          # deepest hardware branch stack


def ignore_kernel_interrupt(frm, to):
    """DataAggregator::ignoreKernelInterrupt with -ignore-interrupt-lbr on
    (its default, and always for user-space binaries)."""
    return frm >= KERNEL_BASE_ADDR or to >= KERNEL_BASE_ADDR


def kept_entries(stack):
    """parseBranchSample: the sample's entries, newest first, without the
    ones that touch the kernel."""
    return [e for e in stack if not ignore_kernel_interrupt(e[0], e[1])]


def sample_traces(stack):
    """parseLBRSample: ((from, to, ft_end), mispredicted) for each kept
    entry, newest first."""
    out = []
    next_from = None                   # From of the next (newer) kept entry
    for frm, to, mis, *_ in kept_entries(stack):
        ft_end = BR_ONLY if next_from is None else next_from
        out.append(((frm, to, ft_end), bool(mis)))
        next_from = frm
    return out


def aggregate(stacks, max_depth=MAX_DEPTH):
    """All stacks -> ({(from, to, ft_end): (count, mispreds)}, counters).

    Each stack is a list of (from, to, mispredicted), newest first. The
    counters use the project's names: samples, branch_entries (entries
    read, kernel ones included), kernel_branches, empty_stacks (perf2bolt's
    NumSamplesNoLBR), traces (sum of all counts) and stack_cut (stacks
    longer than max_depth, cut to their newest entries)."""
    traces = {}
    counters = dict(samples=0, branch_entries=0, kernel_branches=0,
                    empty_stacks=0, traces=0, stack_cut=0)
    for stack in stacks:
        counters["samples"] += 1
        if max_depth is not None and len(stack) > max_depth:
            stack = stack[:max_depth]
            counters["stack_cut"] += 1
        counters["branch_entries"] += len(stack)
        kept = sample_traces(stack)
        counters["kernel_branches"] += len(stack) - len(kept)
        if not kept:
            counters["empty_stacks"] += 1
        for key, mis in kept:
            count, mispreds = traces.get(key, (0, 0))
            traces[key] = (count + 1, mispreds + int(mis))
            counters["traces"] += 1
    return traces, counters


def scale(traces, factor):
    """The same traces counted `factor` times (one batch fed on N CPUs)."""
    return {k: (c * factor, m * factor) for k, (c, m) in traces.items()}


def merge(*trace_dicts):
    out = {}
    for traces in trace_dicts:
        for k, (c, m) in traces.items():
            c0, m0 = out.get(k, (0, 0))
            out[k] = (c0 + c, m0 + m)
    return out


def parse_brstack_entry(token):
    """One `perf script -F brstack` entry, as parseLBREntry reads it:
    FROM/TO/FLAG/rest, numbers with C prefixes (getAsInteger radix 0), one
    flag character P, M or -, and at least 5 more characters. Returns
    (from, to, mispredicted)."""
    frm, to, flag, rest = token.split("/", 3)
    if len(flag) != 1 or flag not in "PM-" or len(rest) < 5:
        raise ValueError(f"not a brstack entry: {token!r}")
    return int(frm, 0), int(to, 0), flag == "M"


# --- branch types --------------------------------------------------------------
# A trace is a return's where its entry's branch type says so: perf2bolt's
# parser marks an entry IsReturn for type RET and not for COND or an empty
# type (bolt/unittests/Profile/DataAggregator.cpp,
# parseLBREntryWithBranchType); PERF_BR_COND_RET is a return too (a
# conditional one, <linux/perf_event.h>). Pre-aggregated, a return's trace
# is an R record: parseAggregatedLBREntry (LLVM 22-era, 00d20e2b9247, the
# RETURN case) reads R like T, with the branch source noted in Returns, and
# a source of 0 (outside the binary) turned into Trace::FT_EXTERNAL_RETURN,
# which processBranchEvents never counts as a branch (checkReturn holds
# for it). Entries here are (from, to, mispredicted) without a type, or
# (from, to, mispredicted, PERF_BR_* number) with one.

RETURN_TYPES = frozenset((6, 10))       # PERF_BR_RET, PERF_BR_COND_RET


def is_return(entry):
    return len(entry) > 3 and entry[3] in RETURN_TYPES


def typed_aggregate(stacks, max_depth=MAX_DEPTH):
    """All stacks -> {(from, to, ft_end, is_return): (count, mispreds)}:
    parseLBRSample's pairing (as sample_traces), each trace also keyed by
    whether its own entry's branch is a return."""
    traces = {}
    for stack in stacks:
        if max_depth is not None:
            stack = stack[:max_depth]
        next_from = None
        for e in kept_entries(stack):
            ft_end = BR_ONLY if next_from is None else next_from
            key = (e[0], e[1], ft_end, is_return(e))
            count, mispreds = traces.get(key, (0, 0))
            traces[key] = (count + 1, mispreds + int(bool(e[2])))
            next_from = e[0]
    return traces


def typed_object_view(traces, ranges):
    """object_view of typed traces: the rule for addresses outside the
    object, with each trace's return flag kept in its key."""
    by_flag = {}
    for (f, t, e, r), v in traces.items():
        by_flag.setdefault(r, {})[(f, t, e)] = v
    out, left_out = {}, 0
    for r, part in by_flag.items():
        view, left = object_view(part, ranges)
        left_out += left
        out.update({k + (r,): v for k, v in view.items()})
    return out, left_out


def preagg_records(typed_traces):
    """The sorted R and T lines of typed traces (ELF addresses): R for a
    return's trace, T for the others (no mispredicts: LLVM 22 takes none)."""
    return sorted("%s %x %x %x %d" % ("R" if r else "T", f, t, e, c)
                  for (f, t, e, r), (c, _m) in typed_traces.items())


# --- one object's view of the traces -----------------------------------------
# Not perf2bolt's aggregation but this project's rule for addresses outside
# the profiled object (bolt-profile-formats.md, section 2), which follows
# what perf2bolt does with them: the reference each object's profile is
# checked against, written from the document, not from translate.py.

def object_view(traces, ranges):
    """Runtime traces -> one object's traces in its ELF addresses.

    `ranges`: the object's code at run time, [(start, end, bias)]: an
    address a in [start, end) is the object's vaddr a - bias. A from or to
    outside becomes 0 (external); a fall-through end outside, or one
    whose start (the branch's to) is outside, becomes BR_ONLY; a trace
    with neither from nor to inside is left out. Returns (traces, count
    left out)."""
    def vaddr(addr):
        for start, end, bias in ranges:
            if start <= addr < end:
                return addr - bias
        return None

    out, left_out = {}, 0
    for (frm, to, ft_end), (count, mis) in traces.items():
        f, t = vaddr(frm), vaddr(to)
        if f is None and t is None:
            left_out += count
            continue
        e = vaddr(ft_end) if t is not None and ft_end != BR_ONLY else None
        key = (0 if f is None else f, 0 if t is None else t,
               BR_ONLY if e is None else e)
        c0, m0 = out.get(key, (0, 0))
        out[key] = (c0 + count, m0 + mis)
    return out, left_out
