"""The reliability suite's harness: seeded fault schedules, supervised pipeline processes, the
end-of-run invariants, and the results log behind docs/reliability.md."""
