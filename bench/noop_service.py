"""The ceiling for the serving benchmark: a BentoML endpoint that does nothing, configured like
serving/service.py (one worker, no access log, async handler), served by `bentoml serve`."""
import bentoml


@bentoml.service(name="noop", workers=1, traffic={"timeout": 30},
                 logging={"access": {"enabled": False}})
class Noop:
    @bentoml.api
    async def noop(self, user_id: str = "", k: int = 10) -> dict:
        return {"user_id": user_id}
