"""The serve job's OpenAI surface (schemas, bodies, SSE), text streaming and spec checks."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from computeswarm.jobs.errors import SpecError
from computeswarm.serve import openai
from computeswarm.serve.generate import TextAccumulator
from computeswarm.serve.run import adapters_from_env, endpoint_from_env

# -- requests --------------------------------------------------------------------------


def test_completion_request_defaults():
    request = openai.CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert (request.temperature, request.stream, request.max_tokens) == (1.0, False, None)
    assert request.stop_strings == ()
    assert request.token_budget(64) == 64


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "hi"}, "model"),
        ({"model": "", "prompt": "hi"}, "model"),
        ({"model": "m", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "prompt": "hi", "max_tokens": -3}, "max_tokens"),
        ({"model": "m", "prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"model": "m", "prompt": "hi", "n": 2}, "n"),
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": ""}, "prompt"),
    ],
)
def test_completion_request_rejects(body, field):
    with pytest.raises(ValidationError) as info:
        openai.CompletionRequest.model_validate(body)
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_stop_strings_and_budget():
    one = openai.CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": "\n"})
    assert one.stop_strings == ("\n",)
    many = openai.CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "stop": ["a", "b"], "max_tokens": 500}
    )
    assert many.stop_strings == ("a", "b")
    assert many.token_budget(64) == 64  # capped by the job's max_tokens
    with pytest.raises(ValidationError):
        openai.CompletionRequest.model_validate(
            {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}
        )
    with pytest.raises(ValidationError):
        openai.CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": [""]})


def test_unknown_fields_from_stock_clients_are_ignored():
    request = openai.CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "user": "u1", "logprobs": None, "stream_options": {}}
    )
    assert request.model == "m"


def test_chat_request_validation():
    ok = openai.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7}
    )
    assert ok.max_tokens == 7
    with pytest.raises(ValidationError) as empty:
        openai.ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    assert empty.value.errors()[0]["loc"][0] == "messages"
    with pytest.raises(ValidationError) as role:
        openai.ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}
        )
    assert role.value.errors()[0]["loc"][:3] == ("messages", 0, "role")
    with pytest.raises(ValidationError):
        openai.ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user"}]})


def test_validation_error_body_names_every_problem():
    try:
        openai.CompletionRequest.model_validate({"prompt": "", "max_tokens": 0})
    except ValidationError as exc:
        body = openai.validation_error(exc)
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert "model" in error["message"] and "max_tokens" in error["message"]
    assert "prompt" in error["message"]
    # FastAPI's RequestValidationError locations start with "body".
    fastapi_style = openai.validation_error([{"loc": ("body", "model"), "msg": "Field required"}])
    assert fastapi_style["error"]["message"] == "model: Field required"
    assert fastapi_style["error"]["param"] == "model"


# -- chat prompt -----------------------------------------------------------------------


def test_chat_prompt_default_format():
    messages = [
        openai.ChatMessage(role="system", content="be brief"),
        openai.ChatMessage(role="user", content="2+2="),
    ]
    assert openai.chat_prompt(messages) == "system: be brief\nuser: 2+2=\nassistant: "


def test_chat_prompt_uses_a_tokenizers_template():
    class Templated:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert (tokenize, add_generation_prompt) == (False, True)
            return "|".join(m["content"] for m in messages) + "|>"

    class Plain:
        chat_template = None

    messages = [openai.ChatMessage(role="user", content="a")]
    assert openai.chat_prompt(messages, Templated()) == "a|>"
    assert openai.chat_prompt(messages, Plain()) == "user: a\nassistant: "


# -- responses -------------------------------------------------------------------------


def test_usage_counts_tokens_and_gpu_seconds():
    assert openai.usage(5, 7, 0.1234567) == {
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "total_tokens": 12,
        "gpu_seconds": 0.123457,
    }


def test_completion_and_chat_bodies():
    use = openai.usage(1, 2, 0.5)
    body = openai.completion_body(
        id="cmpl-1", model="m", text="hi", finish_reason="length", usage=use, created=10
    )
    assert body == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 10,
        "model": "m",
        "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}],
        "usage": use,
    }
    chat = openai.chat_body(id="c", model="m", text="yo", finish_reason="stop", usage=use)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "yo"}
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"]["total_tokens"] == 3


def test_chunks_carry_usage_only_when_given():
    piece = openai.completion_chunk(id="x", model="m", text="a")
    assert "usage" not in piece and piece["choices"][0]["finish_reason"] is None
    last = openai.chat_chunk(
        id="x", model="m", delta={}, finish_reason="stop", usage=openai.usage(1, 1, 0)
    )
    assert last["object"] == "chat.completion.chunk"
    assert last["usage"]["total_tokens"] == 2 and last["choices"][0]["delta"] == {}


def test_models_list_shape():
    listed = openai.models_list("tiny-gpt2", ["adder", "other"], created=1)
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["tiny-gpt2", "adder", "other"]
    assert {m["object"] for m in listed["data"]} == {"model"}
    assert [m["parent"] for m in listed["data"]] == [None, "tiny-gpt2", "tiny-gpt2"]


def test_model_not_found_body():
    body = openai.model_not_found("nope", ["base", "adder"])
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "model_not_found"
    assert "nope" in body["error"]["message"] and "adder" in body["error"]["message"]


# -- SSE -------------------------------------------------------------------------------


def test_sse_framing_round_trips():
    events = [{"a": 1, "text": "x\ny"}, {"b": "data: tricky"}]
    stream = "".join(openai.sse(e) for e in events) + openai.SSE_DONE
    assert stream.startswith('data: {"a":1,"text":"x\\ny"}\n\n')
    assert stream.endswith("data: [DONE]\n\n")
    assert openai.parse_sse(stream) == [*events, "[DONE]"]
    # A JSON payload never holds a raw newline, so "\n\n" always ends an event.
    assert all("\n" not in openai.sse(e)[:-2] for e in events)


def test_parse_sse_refuses_non_data_lines():
    with pytest.raises(ValueError):
        openai.parse_sse("event: x\n\n")


# -- incremental text ------------------------------------------------------------------

VOCAB = {1: "a", 2: "b", 3: "\n", 4: "c", 5: "\ufffd"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_text_pieces_concatenate_to_the_text():
    text = TextAccumulator(decode)
    pieces = []
    for token in [1, 2, 4, 3, 1]:
        text.add([token])
        pieces.append(text.take())
    pieces.append(text.take(final=True))
    assert "".join(pieces) == text.text == "abc\na"
    assert pieces[:5] == ["a", "b", "c", "\n", "a"]


def test_stop_string_truncates_and_holds_back_partial_matches():
    text = TextAccumulator(decode, stop=["c\n"])
    out = []
    for token in [1, 4]:
        text.add([token])
        out.append(text.take())
    assert out == ["", "a"]  # "c" might start the stop string: held back
    text.add([3])
    assert text.stopped and text.text == "a"
    assert text.take() == ""
    text.add([1])  # ignored after the stop
    assert text.text == "a" and text.take(final=True) == ""


def test_false_alarm_is_released_and_incomplete_characters_wait():
    text = TextAccumulator(decode, stop=["cc"])
    text.add([4])
    assert text.take() == ""
    text.add([1])
    assert text.take() == "c"  # "ca" can no longer become "cc"
    plain = TextAccumulator(decode)
    plain.add([1, 5])
    assert plain.take() == "a"  # "\ufffd": a multi-byte character not finished yet
    assert plain.take(final=True) == "\ufffd"


# -- driver inputs ---------------------------------------------------------------------


def test_env_parsing():
    assert adapters_from_env({"COMPUTESWARM_ADAPTERS": '{"a": "/x"}'}) == {"a": "/x"}
    assert adapters_from_env({}) == {}
    with pytest.raises(Exception, match="JSON"):
        adapters_from_env({"COMPUTESWARM_ADAPTERS": "{"})
    endpoint = endpoint_from_env(
        {"COMPUTESWARM_SERVE_HOST": "0.0.0.0", "COMPUTESWARM_SERVE_PORT": "9"}
    )
    assert (endpoint.url, endpoint.probe_url) == ("http://0.0.0.0:9", "http://127.0.0.1:9")
    assert endpoint.proxy_location == "HeadOnly"
    with pytest.raises(Exception, match="port"):
        endpoint_from_env({"COMPUTESWARM_SERVE_PORT": "http"})
    with pytest.raises(Exception, match="HeadOnly"):
        endpoint_from_env({"COMPUTESWARM_SERVE_PROXY": "Somewhere"})


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "tiny-gpt2").mkdir()
    for name in ("adder", "other"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "adapter_config.json").write_text(json.dumps({}))
    return tmp_path


def spec(**overrides):
    return {
        "kind": "serve",
        "name": "adder-api",
        "model": "tiny-gpt2",
        "adapters": {"adder": "adder@1", "other": "./adapters/other"},
        "replicas": {"min": 1, "max": 2},
        "max_concurrent_requests": 8,
        "max_tokens": 64,
        **overrides,
    }


def test_serve_options_resolve_paths(job_dir):
    from computeswarm.serve.app import serve_options

    adder = str(job_dir / "adapters" / "adder")
    options = serve_options(spec(), {"adder": adder}, job_dir)
    assert options.models == ["tiny-gpt2", "adder", "other"]
    assert options.base.absolute == str(job_dir / "tiny-gpt2")
    assert options.base.relative == "tiny-gpt2"
    assert options.adapters["other"].absolute == str(job_dir / "adapters" / "other")
    assert (options.min_replicas, options.max_replicas, options.max_tokens) == (1, 2, 64)
    config = options.replica_config()
    assert config["adapters"]["adder"]["absolute"] == adder
    assert json.loads(json.dumps(config)) == config  # plain data for the replicas


def test_serve_options_name_every_problem(job_dir):
    from computeswarm.serve.app import serve_options

    with pytest.raises(SpecError) as info:
        serve_options(spec(model="missing", replicas={"min": 3, "max": 1}), {}, job_dir)
    message = str(info.value)
    assert "model: 'missing' is not a folder" in message
    assert "adapters.adder: 'adder@1' was not resolved" in message
    assert "replicas" in message
    with pytest.raises(SpecError, match="no adapter at"):
        serve_options(spec(adapters={"x": "./adapters/none"}), {}, job_dir)
    with pytest.raises(SpecError, match="already served"):
        serve_options(spec(adapters={"tiny-gpt2": "./adapters/other"}), {}, job_dir)
