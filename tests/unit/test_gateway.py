"""The inference gateway's pure core: limits with an injected clock, request checks, SSE usage."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from computeswarm.cluster.errors import ApiError
from computeswarm.cluster.gateway.core import (
    InvalidServeRequest,
    ServeTarget,
    parse_serve_request,
)
from computeswarm.cluster.gateway.limits import (
    Admitted,
    ServeLimiter,
    Throttled,
    retry_after_header,
)
from computeswarm.cluster.gateway.usage import SseUsageReader, sse_error_event, usage_of
from computeswarm.cluster.gateway.usage import TokenUsage as Usage

pytestmark = pytest.mark.unit


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def target(**overrides) -> ServeTarget:
    values = {
        "url": "http://10.90.0.1:20012",
        "max_tokens": 64,
        "requests_per_second": 2.0,
        "tokens_per_second": 100.0,
        "max_prompt_chars": 200,
    }
    return ServeTarget(**(values | overrides))


def body(**fields) -> bytes:
    return json.dumps({"model": "m", "prompt": "hello"} | fields).encode()


# -- limits --------------------------------------------------------------------------------


def test_requests_burst_then_refill():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=2.0, tokens_per_second=1000.0)
    assert limiter.admit("job", "key", t, 1) == Admitted(1)
    assert limiter.admit("job", "key", t, 1) == Admitted(1)
    third = limiter.admit("job", "key", t, 1)
    assert isinstance(third, Throttled)
    assert third.limit == "requests"
    assert third.retry_after_s == pytest.approx(0.5)
    assert third.retry_after_header == "1"
    clock.advance(0.25)
    assert isinstance(limiter.admit("job", "key", t, 1), Throttled)
    clock.advance(0.25)
    assert limiter.admit("job", "key", t, 1) == Admitted(1)


def test_retry_after_rounds_up_and_is_at_least_one():
    assert retry_after_header(0.0) == 1
    assert retry_after_header(0.01) == 1
    assert retry_after_header(1.0) == 1
    assert retry_after_header(1.2) == 2
    assert retry_after_header(2.5) == 3
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    slow = target(requests_per_second=0.4)  # one request at once, then one per 2.5 s
    assert isinstance(limiter.admit("job", "key", slow, 1), Admitted)
    waiting = limiter.admit("job", "key", slow, 1)
    assert waiting.retry_after_s == pytest.approx(2.5)
    assert waiting.retry_after_header == "3"


def test_tokens_charged_up_front_then_refunded():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=100.0)
    assert limiter.admit("job", "key", t, 60) == Admitted(60)
    second = limiter.admit("job", "key", t, 60)
    assert isinstance(second, Throttled)
    assert second.limit == "tokens"
    assert second.retry_after_s == pytest.approx(0.2)  # 40 left, 60 needed, 100/s
    # The first request really used 10 tokens: 50 come back, and 60 fit again.
    limiter.settle("job", "key", t, charged=60, used=10)
    assert limiter.admit("job", "key", t, 60) == Admitted(60)


def test_usage_over_the_charge_is_charged_afterwards():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=100.0)
    limiter.admit("job", "key", t, 20)
    limiter.settle("job", "key", t, charged=20, used=90)  # 10 left
    waiting = limiter.admit("job", "key", t, 30)
    assert waiting.retry_after_s == pytest.approx(0.2)


def test_settle_without_usage_keeps_the_charge():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=100.0)
    limiter.admit("job", "key", t, 80)
    limiter.settle("job", "key", t, charged=80, used=None)
    assert isinstance(limiter.admit("job", "key", t, 30), Throttled)


def test_refund_never_overfills_the_bucket():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=100.0)
    limiter.admit("job", "key", t, 50)
    clock.advance(10)
    limiter.settle("job", "key", t, charged=50, used=0)
    assert isinstance(limiter.admit("job", "key", t, 100), Admitted)
    assert isinstance(limiter.admit("job", "key", t, 1), Throttled)


def test_a_request_bigger_than_the_bucket_waits_for_a_full_one_and_leaves_debt():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=100.0)
    assert limiter.admit("job", "key", t, 250) == Admitted(250)  # full bucket: admitted
    waiting = limiter.admit("job", "key", t, 10)
    assert waiting.retry_after_s == pytest.approx(1.6)  # from -150 back up to 10
    clock.advance(0.5)
    waiting = limiter.admit("job", "key", t, 250)  # needs a full bucket (100): -100 -> 100
    assert waiting.retry_after_s == pytest.approx(2.0)


def test_throttled_requests_charge_nothing():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=1.0, tokens_per_second=100.0)
    limiter.admit("job", "key", t, 50)
    for _ in range(5):
        assert isinstance(limiter.admit("job", "key", t, 50), Throttled)
    clock.advance(1.0)
    # One request's worth refilled; the 50 tokens left plus 100 refilled (capped at 100).
    assert limiter.admit("job", "key", t, 100) == Admitted(100)


def test_the_worse_limit_sets_retry_after():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=1.0, tokens_per_second=10.0)
    limiter.admit("job", "key", t, 10)
    waiting = limiter.admit("job", "key", t, 10)
    assert waiting.limit == "tokens"
    assert waiting.retry_after_s == pytest.approx(1.0)
    clock.advance(0.5)
    assert limiter.admit("job", "key", t, 10).retry_after_s == pytest.approx(0.5)


def test_models_listing_costs_no_tokens():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=100.0, tokens_per_second=10.0)
    limiter.admit("job", "key", t, 10)
    assert limiter.admit("job", "key", t, 0) == Admitted(0)


def test_each_key_and_each_job_has_its_own_buckets():
    clock = FakeClock()
    limiter = ServeLimiter(clock)
    t = target(requests_per_second=1.0)
    assert isinstance(limiter.admit("job", "a", t, 1), Admitted)
    assert isinstance(limiter.admit("job", "a", t, 1), Throttled)
    assert isinstance(limiter.admit("job", "b", t, 1), Admitted)
    assert isinstance(limiter.admit("other", "a", t, 1), Admitted)


def test_full_buckets_are_forgotten_to_bound_memory():
    clock = FakeClock()
    limiter = ServeLimiter(clock, max_keys=3)
    t = target(requests_per_second=1.0)
    for key in "abc":
        limiter.admit("job", key, t, 1)
    clock.advance(100)
    limiter.admit("job", "d", t, 1)
    assert len(limiter._keys) == 1


# -- request checks ------------------------------------------------------------------------


def test_a_good_completion_request():
    serve = parse_serve_request("completions", body(max_tokens=10, temperature=0.2), target())
    assert (serve.model, serve.max_tokens, serve.prompt_chars, serve.stream) == ("m", 10, 5, False)
    assert serve.cost == 15
    assert serve.body["temperature"] == 0.2  # unknown fields go upstream untouched


def test_max_tokens_defaults_to_sixteen_or_the_cap():
    assert parse_serve_request("completions", body(), target(max_tokens=64)).max_tokens == 16
    assert parse_serve_request("completions", body(), target(max_tokens=8)).max_tokens == 8
    serve = parse_serve_request("completions", body(max_tokens=None), target())
    assert serve.body["max_tokens"] == 16


@pytest.mark.parametrize("value", [0, -1, 65, "5", True, 1.5])
def test_max_tokens_out_of_range(value):
    with pytest.raises(InvalidServeRequest, match="from 1 to 64") as e:
        parse_serve_request("completions", body(max_tokens=value), target())
    assert e.value.status == 422


def test_max_completion_tokens_is_an_alias():
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7}
    ).encode()
    serve = parse_serve_request("chat.completions", raw, target())
    assert serve.max_tokens == 7
    assert serve.body["max_tokens"] == 7
    assert "max_completion_tokens" not in serve.body
    with pytest.raises(InvalidServeRequest, match="not both"):
        parse_serve_request("completions", body(max_tokens=3, max_completion_tokens=4), target())


def test_choices_multiply_the_charge():
    serve = parse_serve_request("completions", body(max_tokens=10, n=3), target())
    assert serve.cost == 3 * 10 + 5
    with pytest.raises(InvalidServeRequest, match='"n"'):
        parse_serve_request("completions", body(n=9), target())


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(ApiError) as e:
        parse_serve_request("completions", raw, target())
    assert e.value.status == 400
    assert "JSON" in e.value.detail


@pytest.mark.parametrize("model", [None, "", "  ", 3])
def test_model_is_required(model):
    raw = json.dumps({"prompt": "x"} | ({} if model is None else {"model": model})).encode()
    with pytest.raises(InvalidServeRequest, match='"model" is required'):
        parse_serve_request("completions", raw, target())


def test_stream_must_be_a_bool_and_asks_for_usage():
    with pytest.raises(InvalidServeRequest, match='"stream"'):
        parse_serve_request("completions", body(stream="yes"), target())
    serve = parse_serve_request(
        "completions", body(stream=True, stream_options={"include_usage": False}), target()
    )
    assert serve.stream is True
    assert serve.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("prompt", [None, 3, [], [None], {"text": "x"}, [[1, "a"]]])
def test_bad_prompts(prompt):
    raw = json.dumps({"model": "m"} | ({} if prompt is None else {"prompt": prompt})).encode()
    with pytest.raises(InvalidServeRequest, match='"prompt" is required'):
        parse_serve_request("completions", raw, target())


def test_prompt_forms_and_their_size():
    def chars(prompt) -> int:
        return parse_serve_request("completions", body(prompt=prompt), target()).prompt_chars

    assert chars("abc") == 3
    assert chars(["ab", "cde"]) == 5
    assert chars([101, 102, 103]) == 3
    assert chars([[1, 2], [3]]) == 3


def test_prompt_over_the_limit():
    with pytest.raises(InvalidServeRequest, match=r"201 characters; .* at most 200"):
        parse_serve_request("completions", body(prompt="x" * 201), target())
    assert parse_serve_request("completions", body(prompt="x" * 200), target()).prompt_chars == 200


def test_chat_messages():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    raw = json.dumps({"model": "m", "messages": messages}).encode()
    assert parse_serve_request("chat.completions", raw, target()).prompt_chars == 8 + 5


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (None, '"messages" is required'),
        ([], '"messages" is required'),
        ("hi", '"messages" is required'),
        ([{"content": "hi"}], r"messages\[0\] must be an object"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content"),
    ],
)
def test_bad_messages(messages, match):
    raw = json.dumps({"model": "m"} | ({} if messages is None else {"messages": messages}))
    with pytest.raises(InvalidServeRequest, match=match):
        parse_serve_request("chat.completions", raw.encode(), target())


def test_chat_prompt_over_the_limit():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 300}]})
    with pytest.raises(InvalidServeRequest, match="300 characters"):
        parse_serve_request("chat.completions", raw.encode(), target())


# -- usage ---------------------------------------------------------------------------------


def test_usage_is_read_leniently():
    assert usage_of({"choices": []}) is None
    assert usage_of("nope") is None
    assert usage_of(
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "gpu_seconds": 0.5}}
    ) == Usage(3, 4, 0.5)
    assert usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": "4"}}) == Usage(0, 0)
    assert usage_of({"usage": {"prompt_tokens": True, "gpu_seconds": float("nan")}}) == Usage()
    assert Usage(3, 4).total_tokens == 7


def _stream(newline: bytes = b"\n") -> bytes:
    events = [
        {"choices": [{"text": "Hel"}]},
        {"choices": [{"text": "lo"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "gpu_seconds": 0.1}},
    ]
    out = b"".join(b"data: " + json.dumps(e).encode() + newline * 2 for e in events)
    return b": keep-alive" + newline * 2 + out + b"data: [DONE]" + newline * 2


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_sse_usage_at_every_chunk_boundary(newline):
    stream = _stream(newline)
    for cut in range(len(stream) + 1):
        reader = SseUsageReader()
        reader.feed(stream[:cut])
        reader.feed(stream[cut:])
        assert reader.usage == Usage(5, 2, 0.1), cut
        assert reader.done, cut
        assert reader.events == 4


def test_sse_byte_by_byte():
    reader = SseUsageReader()
    for i, byte in enumerate(_stream(b"\r\n")):
        reader.feed(bytes([byte]))
        if i == 10:
            assert reader.usage is None and not reader.done
    assert reader.usage == Usage(5, 2, 0.1)
    assert reader.done


def test_sse_without_done_or_usage():
    reader = SseUsageReader()
    reader.feed(b'data: {"choices": []}\n\ndata: {"choices": [')  # cut mid-event
    assert reader.usage is None
    assert not reader.done


def test_sse_ignores_bad_json_and_joins_multiline_data():
    reader = SseUsageReader()
    reader.feed(b"data: {not json}\n\n")
    reader.feed(b'event: message\ndata: {"usage":\ndata: {"prompt_tokens": 1}}\n\n')
    assert reader.usage == Usage(1, 0)


def test_sse_skips_an_oversized_event():
    reader = SseUsageReader(max_event_bytes=100)
    big = {"usage": {"prompt_tokens": 9}, "pad": "x" * 200}
    reader.feed(b"data: " + json.dumps(big).encode() + b"\n\n")
    reader.feed(b'data: {"usage": {"completion_tokens": 2}}\n\ndata: [DONE]\n\n')
    assert reader.usage == Usage(0, 2)
    assert reader.done


def test_sse_error_event_is_one_retryable_data_event():
    event = sse_error_event("gone")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    error = json.loads(event[6:])["error"]
    assert error == {"message": "gone", "type": "upstream_unavailable", "retryable": True}
