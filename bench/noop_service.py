"""The ceiling for the serving benchmark: a BentoML endpoint that does nothing, configured like
serving/service.py (one worker, no access log, async handler), served by `bentoml serve`.

With NOOP_AS_SERVICE=1 it also settles its heap (serving/heap.py) and fixes BentoML's request
timers (serving/bentoml_fixes.py) as the recommendation service does, so the two differ only in
the work done; without it, it is plain BentoML.
"""
import os

import bentoml

from serving import bentoml_fixes, heap

AS_SERVICE = os.environ.get("NOOP_AS_SERVICE") == "1"
if AS_SERVICE:
    bentoml_fixes.install()


@bentoml.service(name="noop", workers=1, traffic={"timeout": 30},
                 logging={"access": {"enabled": False}})
class Noop:
    def __init__(self) -> None:
        if AS_SERVICE:
            heap.settle()

    @bentoml.api
    async def noop(self, user_id: str = "", k: int = 10) -> dict:
        return {"user_id": user_id}
