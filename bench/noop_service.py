"""The ceiling for the serving benchmark: a BentoML endpoint that does nothing, configured like
serving/service.py (one worker, no access log, async handler), served by `bentoml serve`.

With NOOP_GC_FREEZE=1 it also settles its heap as the recommendation service does
(serving/heap.py), so the two differ only in the work done; without it, it is plain BentoML.
"""
import os

import bentoml

from serving import heap


@bentoml.service(name="noop", workers=1, traffic={"timeout": 30},
                 logging={"access": {"enabled": False}})
class Noop:
    def __init__(self) -> None:
        if os.environ.get("NOOP_GC_FREEZE") == "1":
            heap.settle()

    @bentoml.api
    async def noop(self, user_id: str = "", k: int = 10) -> dict:
        return {"user_id": user_id}
