"""The ceiling for the serving benchmark: a BentoML endpoint that does nothing, configured like
serving/service.py (one worker, no access log, async handler), served by `bentoml serve`.

With NOOP_GC_FREEZE=1 it also freezes its start-up objects out of the garbage collector as the
recommendation service does (see serving/service.py), so the two differ only in the work done;
without it, it is plain BentoML.
"""
import gc
import os

import bentoml


@bentoml.service(name="noop", workers=1, traffic={"timeout": 30},
                 logging={"access": {"enabled": False}})
class Noop:
    def __init__(self) -> None:
        if os.environ.get("NOOP_GC_FREEZE") == "1":
            gc.collect()
            gc.freeze()

    @bentoml.api
    async def noop(self, user_id: str = "", k: int = 10) -> dict:
        return {"user_id": user_id}
