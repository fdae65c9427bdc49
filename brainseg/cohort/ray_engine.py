"""The Ray engine of a cohort run (``--engine ray``): one actor per worker, each holding the model once.

Imported only when ``--engine ray`` is asked for; Ray is the optional extra ``pip install brainseg[cluster]``.
Each actor reserves ``settings.threads`` CPUs (the torch / ONNX Runtime threads it runs). Without ``--address``
the command starts a local Ray with ``workers * threads`` CPUs (``ray.init(num_cpus=...)``) and stops it at the
end; with ``--address`` (``auto`` or ``HOST:6379``) it joins a running cluster and leaves it up.
The actors write the masks themselves (so on a cluster, ``--out-dir`` and the inputs must be on storage every node
sees at the same path) and send back only the table's row; the driver writes the table (docs/cohorts.md).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from brainseg.cohort.worker import ScanWorker, WorkerSettings
from brainseg.io.subjects import SubjectInputs
from brainseg.io.volumes import VolumeError

INSTALL_HINT = "the Ray engine needs Ray: pip install 'brainseg[cluster]' (or pip install 'ray>=2.60')"


def import_ray() -> Any:
    """``ray``, or a :class:`VolumeError` saying how to install it."""
    try:
        import ray
        import ray.util  # noqa: F401  (ActorPool)
    except ImportError:
        raise VolumeError(INSTALL_HINT) from None
    return ray


class _ActorBody:
    """A :class:`ScanWorker` inside a Ray actor (the model loaded once, in ``__init__``)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.worker = ScanWorker(settings)

    def run(self, scan: SubjectInputs) -> dict:
        return self.worker.run(scan)


def run_ray(scans: list[SubjectInputs], settings: WorkerSettings, workers: int,
            address: str | None = None) -> Iterator[dict]:
    """Rows as scans finish on ``workers`` Ray actors, each holding the model once and reserving ``settings.threads``
    CPUs; the driver (this process) only schedules and collects the rows."""
    ray = import_ray()
    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        options: dict[str, Any] = {"address": address} if address else {"num_cpus": workers * settings.threads}
        ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        actor_class = ray.remote(num_cpus=settings.threads)(_ActorBody)
        actors = [actor_class.remote(settings) for _ in range(workers)]
        pool = ray.util.ActorPool(actors)
        for scan in scans:
            pool.submit(lambda actor, item: actor.run.remote(item), scan)
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except ray.exceptions.RayError as exc:  # an actor died (out of memory, a node lost)
                raise OSError(f"a Ray worker died (out of memory? a node lost?); rerun the same command to go on: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
