"""Garbage-collector settings for a long-lived serving worker.

A full (gen2) collection walks every tracked object: in a BentoML worker that is ~175k objects
from BentoML, pydantic, pandas, pyarrow and the loaded model and people, 100-500 ms per
collection on the benchmark machine, paid by whichever request triggered it, the "~100 ms
p99 at concurrency 1". After start-up nearly all of them live as long as the worker, so they
are frozen out of the collector, and full collections of what is left are made rare; young
collections (the garbage requests make) run as usual.
"""
import gc

#: Young-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 1000


def settle() -> None:
    """Call once start-up is done: collect, freeze the survivors, make full collections rare."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
