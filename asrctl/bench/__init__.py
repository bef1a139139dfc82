"""``asrctl bench``: speed (RTFx) and accuracy (CER/WER) of a model, offline or against a server.

* :mod:`asrctl.bench.offline`: transcribe a test set through the pipeline and time it;
* :mod:`asrctl.bench.scoring`: references, text normalisers and error rates (jiwer);
* :mod:`asrctl.bench.loadtest`: concurrent requests against ``asrctl serve``;
* :mod:`asrctl.bench.report`: the JSON report; :mod:`asrctl.bench.plot`: its charts.
"""

from asrctl.bench.offline import BenchOptions, OfflineRun, Speed, run_offline

__all__ = ["BenchOptions", "OfflineRun", "Speed", "run_offline"]
