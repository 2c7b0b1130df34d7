"""The experiment runner shared by ``glioseg demo`` and ``glioseg study``.

- ``overrides``: typed config overrides (``section("data", cache_dir=...)``), checked against
  the config's dataclasses when they are built and applied with ``dataclasses.replace``;
- ``runner``: synthetic cohorts as disjoint index ranges of one site stream, written and
  preprocessed; run-if-not-done markers (the demo's ``.stages/``, the study's ``result.json``);
  validation records of a run's ``metrics.jsonl``;
- ``study_plan``, ``study_stats``, ``study_tables``: the label-efficiency study's plan and run
  specs, its statistics, and its CSV / Markdown outputs (the entry point is ``glioseg.study``,
  the figures ``glioseg.report.study_figures``).
"""
