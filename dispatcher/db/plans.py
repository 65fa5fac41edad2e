"""Session settings of the hot path's kept connections: one plan, by index, kept.

The claims (a channel worker's connection) and the outcomes (the recorder's) are a few
statements run thousands of times a minute, each finding a few rows of a large table
through an index. Left to ``plan_cache_mode = auto``, PostgreSQL does one of two costly
things with them:

- it plans them afresh on every call (their generic plan looks dearer than a custom one
  for a few rows): as much CPU as executing them, 0.2-0.5 ms a call for the claims'
  common table expressions (docs/benchmarks.md, "Claims plan once");
- or, after five calls, it keeps a generic plan, and one made while ``deliveries`` was
  small (a new database, a replica started early) hash-joins over a scan of the whole of
  ``deliveries`` and ``events``; it keeps doing so as the tables grow, until an ANALYZE
  happens to invalidate it: the drain's two speeds (docs/benchmarks.md, "Why the drain
  had two speeds").

So these sessions plan each statement once, generically, with scans and hash or merge
joins ruled out: never the right way to find a few rows by key, and ruled out whatever
the statistics said when the plan was made. The statements are written for that: rows by
primary key from arrays, joins as nested loops over a handful of rows.
tests/integration/test_outcome_writes.py and tests/delivery/test_claim_plans.py check the
plans made on an empty table.
"""

INDEX_PLANS: dict[str, str] = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}
