"""The engine: a compiled :class:`~.plan.Plan` and the one :class:`~.runner.Executor` that runs it.

* :mod:`.plan` -- compile a config against a model: slots (site + intervention) and their
  grouping by ``(module, io)``;
* :mod:`.arguments` -- validate and normalise a call's locations, sources, source
  representations and subspaces (shared by ``forward`` and ``generate``);
* :mod:`.units` -- unit locations as index tensors, vectorised gather / scatter;
* :mod:`.hooks` -- installing hooks for the duration of a pass, reading/writing module I/O;
* :mod:`.runner` -- the executor: one hook body driven by a window (whole sequences for
  ``forward``), source passes that stop early, serial mode;
* :mod:`.generate` -- ``generate``'s per-step window and its documented position semantics;
* :mod:`.outputs` -- the output type and the one place that shapes what a call returns.
"""
