"""The coalescer behind /recommend: requests started in one loop turn share one call."""
import asyncio

import pytest

from serving.batching import Coalescer


def run(coroutine):
    return asyncio.run(coroutine)


def test_submissions_of_one_loop_turn_share_one_call_in_order():
    calls, sizes = [], []

    def double_all(items):
        calls.append(list(items))
        return [2 * item for item in items]

    async def main():
        coalescer = Coalescer(double_all, on_batch=sizes.append)
        first = await asyncio.gather(*(coalescer.submit(n) for n in range(5)))
        alone = await coalescer.submit(7)
        return first, alone

    assert run(main()) == ([0, 2, 4, 6, 8], 14)
    assert calls == [[0, 1, 2, 3, 4], [7]] and sizes == [5, 1]


def test_it_looks_again_while_more_keep_arriving_up_to_max_turns():
    """Item n is submitted n loop turns after item 0 (tasks started latest-first, so each
    submission lands just before the coalescer looks)."""
    def answered(max_turns):
        calls = []

        def echo(items):
            calls.append(list(items))
            return list(items)

        async def main():
            coalescer = Coalescer(echo, max_turns=max_turns)

            async def after(turns):
                for _ in range(turns):
                    await asyncio.sleep(0)
                return await coalescer.submit(turns)

            return await asyncio.gather(*(after(turns) for turns in (3, 2, 1, 0)))

        assert run(main()) == [3, 2, 1, 0]
        return calls

    assert answered(max_turns=8) == [[0, 1, 2, 3]]
    assert answered(max_turns=1) == [[0, 1, 2], [3]]
    assert answered(max_turns=0) == [[0, 1], [2, 3]]  # what reaches it before its first look


def test_batches_are_at_most_max_batch():
    calls = []

    def echo(items):
        calls.append(len(items))
        return list(items)

    async def main():
        coalescer = Coalescer(echo, max_batch=2)
        return await asyncio.gather(*(coalescer.submit(n) for n in range(5)))

    assert run(main()) == [0, 1, 2, 3, 4] and calls == [2, 2, 1]


def test_a_failing_item_fails_alone_and_the_others_are_answered():
    def reciprocal(items):
        return [1 / item for item in items]

    async def main():
        coalescer = Coalescer(reciprocal)
        return await asyncio.gather(*(coalescer.submit(n) for n in (1, 0, 4)),
                                    return_exceptions=True)

    one, zero, four = run(main())
    assert (one, four) == (1.0, 0.25) and isinstance(zero, ZeroDivisionError)


def test_a_wrong_number_of_answers_is_an_error_not_a_mixup():
    async def main():
        coalescer = Coalescer(lambda items: [])
        return await asyncio.gather(coalescer.submit(1), return_exceptions=True)

    (answer,) = run(main())
    assert isinstance(answer, RuntimeError) and "0 answers to 1 items" in str(answer)


def test_a_cancelled_request_does_not_stop_the_others():
    async def main():
        coalescer = Coalescer(lambda items: [item.upper() for item in items])
        gone = asyncio.ensure_future(coalescer.submit("a"))
        kept = asyncio.ensure_future(coalescer.submit("b"))
        await asyncio.sleep(0)  # both are waiting; the batch is due
        gone.cancel()
        return await kept, gone.cancelled()

    assert run(main()) == ("B", True)


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(list, max_batch=0)
