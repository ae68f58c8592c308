"""The LLM tagger against a local OpenAI-compatible server with scripted replies (pytest-httpserver)."""

import json
import socket
import threading
import time
from contextlib import contextmanager

import polars as pl
import pytest
from pytest_httpserver import HTTPServer
from typer.testing import CliRunner
from werkzeug import Response

from conftest import fake_encode
from semrec import embed
from semrec.cli import app
from semrec.errors import SemrecError, StageFailed
from semrec.project import render_toml
from semrec.report import ProgressBar, RecordingReporter, Reporter
from semrec.settings import LLMSettings
from semrec.tags import tree_violations
from semrec.tags.llm import (
    AnswerCache, CandidateIndex, ChatClient, InvalidAnswer, LLMJob, Stopped, answer_schema, answer_tokens, build_messages,
    parse_answer, tag_with_llm,
)
from semrec.tags.stage import LLM_CACHE, run_tag, tag_sample
from semrec.artifacts import ITEMS, TAGS
from semrec.io import write_parquet
from semrec.workspace import StageRun

PATH = "/v1/chat/completions"


pytestmark = pytest.mark.usefixtures("no_sentence_model")


def chat(content: str) -> dict:
    return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def tags_json(*names: str) -> str:
    return json.dumps({"tags": list(names)})


def echo_tags(request) -> Response:
    """Answers from the item text: level 1 from its first word, level 2 from its second, level 3 from its third."""
    prompt = request.get_json()["messages"][1]["content"]
    words = prompt.splitlines()[0].removeprefix("Item: ").split()
    names = [w.capitalize() for w in (words + ["general"] * 3)[:3]]
    return Response(json.dumps(chat(tags_json(*names))), content_type="application/json")


def form_of(request) -> str:
    """The structured-output form of a request: its response_format type, or "prompt" without one."""
    return (request.get_json().get("response_format") or {}).get("type", "prompt")


def forms_sent(httpserver) -> list[str]:
    return [form_of(request) for request, _ in httpserver.log]


LLAMA_CPP_PYTHON_500 = json.dumps({"error": {"message": "1 validation error: {'type': 'literal_error', 'loc': ('body', "
                                             "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}",
                                             "type": "internal_server_error"}})


def rejecting(*forms: str, status: int = 500, body: str = LLAMA_CPP_PYTHON_500):
    """A server that answers `status` to the structured-output `forms` it does not take, and like echo_tags to the rest."""

    def handler(request) -> Response:
        if form_of(request) in forms:
            return Response(body, status=status, content_type="application/json")
        return echo_tags(request)

    return handler


def settings(httpserver, **overrides) -> LLMSettings:
    values = {"base_url": httpserver.url_for("/v1"), "model": "tiny", "retry_wait_s": 0.01, "timeout_s": 5.0,
              "max_retries": 2, "concurrency": 1, "candidates": 0}
    values.update(overrides)
    return LLMSettings(**values)


def jobs(texts: list[str], levels: int = 3) -> list[LLMJob]:
    return [LLMJob(i, f"K{i:03d}", text, [None] * levels) for i, text in enumerate(texts)]


def run_jobs(httpserver, cache_path, texts, reporter=None, **overrides):
    s = settings(httpserver, **overrides)
    reporter = reporter or Reporter()
    return tag_with_llm(
        jobs(texts), settings=s, levels=3, cache=AnswerCache(cache_path), vocabulary=[set(), set(), set()],
        item_vectors=None, encode=None, reporter=reporter, client=ChatClient(s, reporter=reporter),
    )


MESSAGES = build_messages("red matte lipstick", [None, None, None], [[], [], []])
PRODUCTS = [f"{a} {b} item{i}" for i, (a, b) in enumerate((a, b) for a in ("makeup", "hair", "skin") for b in ("red", "blue", "gold", "mint"))]


# -- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    ['{"tags": ["Makeup", "Lips", "Lipstick"]}', '```json\n{"tags": ["Makeup", "Lips", "Lipstick"]}\n```',
     '<think>{"tags": []}</think>Here: {"tags": ["Makeup", "Makeup > Lips", " Lipstick "]}',
     '{"tags": ["Makeup", "Lips\n", "Lipstick"]}'],
)
def test_parse_answer_accepts_fences_reasoning_paths_and_raw_newlines(content):
    assert parse_answer(content, 3) == ["Makeup", "Lips", "Lipstick"]


@pytest.mark.parametrize(
    "content, problem",
    [("Makeup, Lips, Lipstick", "not JSON"), ('{"tags": ["Makeup", "Lips"', "not JSON"), ('{"tag": []}', 'no "tags" list'),
     ('{"tags": ["Makeup", "Lips"]}', "2 names, expected exactly 3"), ('{"tags": ["Makeup", "", "x"]}', "tag 2"), ("", "empty")],
)
def test_parse_answer_says_what_is_wrong(content, problem):
    with pytest.raises(InvalidAnswer, match=problem):
        parse_answer(content, 3)


# -- the client ---------------------------------------------------------------------------------
def test_well_formed_answer_sends_model_messages_and_the_key_from_the_named_variable(httpserver, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-test")
    httpserver.expect_request(PATH, method="POST", headers={"Authorization": "Bearer sk-test"}).respond_with_json(
        chat(tags_json("Makeup", "Lips", "Lipstick"))
    )
    client = ChatClient(settings(httpserver, api_key_env="MY_LLM_KEY", temperature=0.2))
    assert client.ask_tags(MESSAGES, 3) == ["Makeup", "Lips", "Lipstick"]
    body = httpserver.log[0][0].get_json()
    assert body["model"] == "tiny" and body["temperature"] == 0.2 and body["messages"] == MESSAGES
    assert body["max_tokens"] == answer_tokens(3) and body["response_format"]["type"] == "json_schema"
    assert client.sent == 1


def test_a_malformed_answer_is_sent_back_with_the_error_then_accepted(httpserver):
    httpserver.expect_ordered_request(PATH).respond_with_json(chat("Makeup, Lips, Lipstick"))
    httpserver.expect_ordered_request(PATH).respond_with_json(chat(tags_json("Makeup", "Lips", "Lipstick")))
    client = ChatClient(settings(httpserver))
    assert client.ask_tags(MESSAGES, 3) == ["Makeup", "Lips", "Lipstick"]
    retry = httpserver.log[1][0].get_json()["messages"]
    assert retry[:2] == MESSAGES and retry[2] == {"role": "assistant", "content": "Makeup, Lips, Lipstick"}
    assert "invalid" in retry[3]["content"] and "not JSON" in retry[3]["content"]


def test_429_is_retried_after_the_servers_wait(httpserver):
    httpserver.expect_ordered_request(PATH).respond_with_json({"error": "slow down"}, status=429, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request(PATH).respond_with_json(chat(tags_json("A", "B", "C")))
    client = ChatClient(settings(httpserver))
    assert client.ask_tags(MESSAGES, 3) == ["A", "B", "C"] and client.sent == 2


def test_a_malformed_retry_after_falls_back_to_the_backoff(httpserver):
    httpserver.expect_ordered_request(PATH).respond_with_json({"error": "busy"}, status=503, headers={"Retry-After": "soon"})
    httpserver.expect_ordered_request(PATH).respond_with_json(chat(tags_json("A", "B", "C")))
    client = ChatClient(settings(httpserver))
    assert client.ask_tags(MESSAGES, 3) == ["A", "B", "C"] and client.sent == 2


def test_a_stopping_run_ends_a_retry_wait_at_once(httpserver):
    httpserver.expect_request(PATH).respond_with_json({"error": "busy"}, status=503)
    client = ChatClient(settings(httpserver, retry_wait_s=30.0))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        client.complete(MESSAGES, max_tokens=50, stop=stop)
    assert time.monotonic() - started < 5 and client.sent == 1


def test_500_forever_fails_clearly_after_the_retries_and_loses_no_cached_answer(httpserver, tmp_path):
    cache_path = tmp_path / "llm.jsonl"
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    first = run_jobs(httpserver, cache_path, PRODUCTS[:2])
    assert len(first.answers) == 2 and first.sent == 2
    httpserver.clear()
    httpserver.expect_request(PATH).respond_with_data("upstream exploded", status=500)
    with pytest.raises(StageFailed) as error:
        run_jobs(httpserver, cache_path, PRODUCTS[:3])
    assert httpserver.url_for(PATH) in error.value.message and "HTTP 500" in error.value.message
    assert "after 3 tries" in error.value.message and "kept" in error.value.hint
    # only the new item was asked: a 500 on the first request in a structured form steps down (json_schema,
    # json_object), then the prompt alone gets 1 try + 2 retries
    assert forms_sent(httpserver) == ["json_schema", "json_object", "prompt", "prompt", "prompt"]
    assert len(AnswerCache(cache_path).entries) == 2


def test_a_request_that_outlasts_the_timeout_is_retried_then_reported(httpserver):
    def slow(request):
        time.sleep(0.4)
        return Response(json.dumps(chat(tags_json("A", "B", "C"))), content_type="application/json")

    httpserver.expect_request(PATH).respond_with_handler(slow)
    client = ChatClient(settings(httpserver, timeout_s=0.1, max_retries=1))
    with pytest.raises(StageFailed, match=r"no answer within 0.1 s") as error:
        client.ask_tags(MESSAGES, 3)
    assert "tag.llm.timeout_s" in error.value.hint and client.sent == 2


def test_a_refused_key_is_reported_at_once_naming_the_variable(httpserver):
    httpserver.expect_request(PATH).respond_with_json({"error": {"message": "Incorrect API key provided"}}, status=401)
    client = ChatClient(settings(httpserver))
    with pytest.raises(SemrecError) as error:
        client.ask_tags(MESSAGES, 3)
    assert error.value.exit_code == 2 and "HTTP 401" in error.value.message and httpserver.url_for(PATH) in error.value.message
    assert "OPENAI_API_KEY" in error.value.hint and client.sent == 1


@pytest.mark.parametrize(
    "status, body, message, hint",
    [
        (404, {"error": {"message": 'model "tiny" not found, try pulling it first'}}, "does not know the model 'tiny'", "tag.llm.model"),
        (400, {"object": "error", "message": "The model `tiny` does not exist."}, "does not know the model", "tag.llm.model"),
        (404, "404 page not found", "not a chat-completions endpoint", "/v1"),
        (400, {"error": {"message": "This model's maximum context length is 4097 tokens", "type": "invalid_request_error"}},
         "rejected the request (HTTP 400)", "tag.llm"),
        (200, "<html>welcome to nginx</html>", "not a chat-completions response", "OpenAI-compatible"),
    ],
)
def test_an_unknown_model_or_wrong_url_is_a_clear_error(httpserver, status, body, message, hint):
    if isinstance(body, dict):
        httpserver.expect_request(PATH).respond_with_json(body, status=status)
    else:
        httpserver.expect_request(PATH).respond_with_data(body, status=status)
    with pytest.raises(SemrecError) as error:
        ChatClient(settings(httpserver)).ask_tags(MESSAGES, 3)
    assert message in error.value.message and hint in error.value.hint


def test_an_unreachable_endpoint_names_the_url_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", model="tiny", retry_wait_s=0.01, max_retries=1)
    with pytest.raises(StageFailed) as error:
        ChatClient(llm).ask_tags(MESSAGES, 3)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in error.value.message and "cannot connect" in error.value.message
    assert "tag.llm.base_url" in error.value.hint


# -- structured output --------------------------------------------------------------------------
def test_the_schema_holds_known_levels_and_levels_with_candidates_and_leaves_the_rest_free():
    known, candidates = ["Makeup", None, None], [[], ["Makeup > Lips", "Makeup > Eyes", "Hair > Lips"], []]
    levels = answer_schema(known, candidates)["properties"]["tags"]["prefixItems"]
    assert levels == [{"type": "string", "enum": ["Makeup"]}, {"type": "string", "enum": ["Lips", "Eyes"]},
                      {"type": "string", "minLength": 1, "maxLength": 80}]
    assert answer_schema(known, candidates, candidates_only=False)["properties"]["tags"]["prefixItems"][1] == levels[2]


@pytest.mark.parametrize("max_tokens, sent", [(0, answer_tokens(3)), (300, 300)])
def test_every_request_carries_the_schema_and_a_bound_on_the_answers_length(httpserver, max_tokens, sent):
    httpserver.expect_request(PATH).respond_with_json(chat(tags_json("Makeup", "Lips", "Lipstick")))
    known, candidates = ["Makeup", None, None], [[], ["Makeup > Lips"], []]
    schema = answer_schema(known, candidates)
    ChatClient(settings(httpserver, max_tokens=max_tokens)).ask_tags(build_messages("red lipstick", known, candidates), 3, schema=schema)
    body = httpserver.log[0][0].get_json()
    assert body["max_tokens"] == sent
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}}


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_server_that_rejects_json_schema_gets_json_object_with_the_schema_for_the_rest_of_the_run(httpserver, tmp_path, status):
    httpserver.expect_request(PATH).respond_with_handler(rejecting("json_schema", status=status))
    reporter = RecordingReporter()
    outcome = run_jobs(httpserver, tmp_path / "llm.jsonl", PRODUCTS[:3], reporter=reporter)
    assert len(outcome.answers) == 3 and outcome.sent == 4
    assert forms_sent(httpserver) == ["json_schema", "json_object", "json_object", "json_object"]  # a rejection is not retried
    schema = httpserver.log[1][0].get_json()["response_format"]["schema"]
    assert schema["properties"]["tags"]["minItems"] == schema["properties"]["tags"]["maxItems"] == 3
    assert f"rejected response_format {{\"type\": \"json_schema\"}} (HTTP {status}" in reporter.text()
    assert ("info", f"structured output: {httpserver.url_for(PATH)} takes response_format {{\"type\": \"json_object\"}} "
            "with a schema") in reporter.messages


def test_a_server_that_rejects_both_forms_gets_the_prompt_alone_and_a_warning(httpserver, tmp_path):
    httpserver.expect_request(PATH).respond_with_handler(rejecting("json_schema", "json_object", status=400))
    reporter = RecordingReporter()
    outcome = run_jobs(httpserver, tmp_path / "llm.jsonl", PRODUCTS[:2], reporter=reporter)
    assert len(outcome.answers) == 2
    assert forms_sent(httpserver) == ["json_schema", "json_object", "prompt", "prompt"]
    assert any(kind == "warn" and "takes no response_format" in message for kind, message in reporter.messages)


def test_a_form_that_answered_is_kept_when_a_later_request_fails(httpserver, tmp_path):
    replies = iter([200, 500, 200])

    def flaky(request) -> Response:
        return echo_tags(request) if next(replies) == 200 else Response("upstream hiccup", status=500)

    httpserver.expect_request(PATH).respond_with_handler(flaky)
    outcome = run_jobs(httpserver, tmp_path / "llm.jsonl", PRODUCTS[:2])
    assert len(outcome.answers) == 2 and outcome.sent == 3
    assert forms_sent(httpserver) == ["json_schema"] * 3  # the 500 was retried in the same form


def test_an_unknown_model_is_reported_not_taken_for_a_rejected_form(httpserver):
    httpserver.expect_request(PATH).respond_with_json({"object": "error", "message": "The model `tiny` does not exist."}, status=400)
    with pytest.raises(SemrecError, match="does not know the model"):
        ChatClient(settings(httpserver)).ask_tags(MESSAGES, 3)
    assert forms_sent(httpserver) == ["json_schema"]


# -- secrets ------------------------------------------------------------------------------------
@pytest.fixture
def demo_project(make_workspace, httpserver):
    """The folder of a small demo project tagged by the stub server, for the CLI (download and embed run on first use)."""
    ws = make_workspace("demo", **{
        "data.demo_items": 64, "data.demo_users": 64, "tag.source": "llm", "tag.llm.base_url": httpserver.url_for("/v1"),
        "tag.llm.model": "tiny", "tag.llm.retry_wait_s": 0.01, "tag.llm.max_retries": 1, "tag.llm.concurrency": 1,
    })
    ws.project.path.write_text(render_toml(ws.settings))
    return ws.root

ECHOED_KEY = "sk-test-0123456789abcdef"


def test_the_key_and_bearer_tokens_are_redacted_from_errors_and_log_lines(httpserver, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ECHOED_KEY)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: Bearer {ECHOED_KEY}; also key={ECHOED_KEY}, "
                                            "Bearer other-token-42"}})

    def handler(request) -> Response:
        return Response(echo, status=400 if form_of(request) == "json_schema" else 401, content_type="application/json")

    httpserver.expect_request(PATH).respond_with_handler(handler)
    reporter = RecordingReporter()
    client = ChatClient(settings(httpserver), reporter=reporter)
    assert client.redact(f"Bearer {ECHOED_KEY} Bearer other-token-42 {ECHOED_KEY}") == "Bearer <redacted> Bearer <redacted> <redacted>"
    with pytest.raises(SemrecError) as error:
        client.ask_tags(MESSAGES, 3)
    said = str(error.value) + "\n" + reporter.text()
    assert "HTTP 401" in error.value.message and "rejected response_format" in reporter.text() and "<redacted>" in said
    assert ECHOED_KEY not in said and "other-token-42" not in said


def test_the_key_a_server_echoes_never_reaches_stderr(demo_project, httpserver, monkeypatch):
    """Through the CLI: the step-down log line and the error both quote the server's body."""
    monkeypatch.setenv("OPENAI_API_KEY", ECHOED_KEY)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: Bearer {ECHOED_KEY}"}})

    def handler(request) -> Response:
        return Response(echo, status=500 if form_of(request) == "json_schema" else 401, content_type="application/json")

    httpserver.expect_request(PATH).respond_with_handler(handler)
    result = CliRunner().invoke(app, ["--project", str(demo_project), "tag"])
    assert result.exit_code == 2, result.output
    assert "HTTP 401" in result.stderr and "rejected response_format" in result.stderr and "<redacted>" in result.stderr
    assert ECHOED_KEY not in result.output and ECHOED_KEY not in result.stderr


# -- runs over many items -----------------------------------------------------------------------
def test_wrong_level_counts_are_retried_then_a_failure_that_is_not_cached_so_a_rerun_asks_again(httpserver, tmp_path):
    cache_path = tmp_path / "llm.jsonl"
    httpserver.expect_request(PATH).respond_with_json(chat(tags_json("Makeup", "Lips")))
    outcome = run_jobs(httpserver, cache_path, PRODUCTS[:1])
    assert outcome.answers == {} and "expected exactly 3" in str(outcome.failures[0]) and outcome.sent == 3
    assert outcome.failures[0].answer == tags_json("Makeup", "Lips") and AnswerCache(cache_path).entries == {}
    httpserver.clear()
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    again = run_jobs(httpserver, cache_path, PRODUCTS[:1])
    assert again.failures == {} and again.answers[0] == ["Makeup", "Red", "Item0"] and again.sent == 1


def test_a_failure_recorded_by_an_earlier_version_is_asked_again(tmp_path):
    path = tmp_path / "llm.jsonl"
    failure = {"key": "a", "model": "tiny", "item_key": "K000", "error": "the answer is not JSON", "answer": "no idea"}
    path.write_text(json.dumps(failure) + "\n" + json.dumps({"key": "b", "tags": ["B"]}) + "\n")
    assert set(AnswerCache(path).entries) == {"b"}


def test_answers_are_cached_per_endpoint_so_a_new_base_url_asks_again(httpserver, tmp_path):
    cache_path = tmp_path / "llm.jsonl"
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    assert run_jobs(httpserver, cache_path, PRODUCTS[:2]).sent == 2
    assert run_jobs(httpserver, cache_path, PRODUCTS[:2]).cached == 2
    with HTTPServer() as other:
        other.expect_request(PATH).respond_with_handler(echo_tags)
        moved = run_jobs(httpserver, cache_path, PRODUCTS[:2], base_url=other.url_for("/v1"))
        assert moved.cached == 0 and moved.sent == 2 and len(other.log) == 2
    assert run_jobs(httpserver, cache_path, PRODUCTS[:2]).cached == 2  # the first endpoint's answers are still there


class InterruptAfter(Reporter):
    """Raises KeyboardInterrupt (as Ctrl-C would) once `after` items are done."""

    def __init__(self, after: int):
        self.after, self.done = after, 0

    @contextmanager
    def progress(self, description, total=None):
        reporter = self

        class Bar(ProgressBar):
            def advance(self, n=1):
                reporter.done += n
                if reporter.done >= reporter.after:
                    raise KeyboardInterrupt

        yield Bar()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_interrupted_run_resumes_without_repeating_a_request(httpserver, tmp_path, concurrency):
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    cache_path = tmp_path / "llm.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_jobs(httpserver, cache_path, PRODUCTS, reporter=InterruptAfter(4), concurrency=concurrency)
    sent_before = len(httpserver.log)
    assert 4 <= sent_before < len(PRODUCTS)
    assert len(AnswerCache(cache_path).entries) == sent_before  # every answer that arrived was kept
    outcome = run_jobs(httpserver, cache_path, PRODUCTS, concurrency=concurrency)
    assert len(outcome.answers) == len(PRODUCTS) and outcome.cached == sent_before
    assert len(httpserver.log) == len(PRODUCTS)
    assert outcome.answers[0] == ["Makeup", "Red", "Item0"]


def test_a_cache_line_cut_by_a_kill_is_skipped_and_the_next_answer_starts_a_new_line(tmp_path):
    path = tmp_path / "llm.jsonl"
    path.write_text(json.dumps({"key": "a", "tags": ["A"]}) + "\n" + '{"key": "b", "ta')
    cache = AnswerCache(path)
    assert set(cache.entries) == {"a"}
    cache.record({"key": "c", "tags": ["C"]})
    assert set(AnswerCache(path).entries) == {"a", "c"}


def test_candidates_are_the_closest_tags_under_the_known_parent():
    index = CandidateIndex(2, lambda texts: fake_encode(LLMSettings(), texts, normalize=True))
    index.add(0, {"Makeup", "Hair Care"})
    index.add(1, {"Makeup > Lips", "Makeup > Eyes", "Hair Care > Lips Balm"})
    vector = fake_encode(LLMSettings(), ["lips"], normalize=True)[0]
    assert index.closest(1, vector, 1) in (["Makeup > Lips"], ["Hair Care > Lips Balm"])
    assert index.closest(1, vector, 5, prefix="Hair Care") == ["Hair Care > Lips Balm"]
    assert index.closest(1, vector, 0) == []


def test_prompts_and_answers_do_not_depend_on_concurrency(httpserver, tmp_path):
    """Candidates grow only between rounds, so a resumed or differently parallel run asks the same prompts."""
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    texts = [f"{a} {b} {c}" for a in ("makeup", "hair", "skin", "bath") for b in ("red", "blue", "gold", "mint", "sand")
             for c in ("one", "two", "three", "four")]
    vectors = fake_encode(LLMSettings(), texts, normalize=True)
    encode = lambda tags: fake_encode(LLMSettings(), tags, normalize=True)  # noqa: E731
    runs = []
    for concurrency, name in [(8, "a.jsonl"), (1, "b.jsonl")]:
        s = settings(httpserver, concurrency=concurrency, candidates=3)
        outcome = tag_with_llm(
            jobs(texts), settings=s, levels=3, cache=AnswerCache(tmp_path / name), vocabulary=[{"Makeup"}, set(), set()],
            item_vectors=vectors, encode=encode, reporter=Reporter(), client=ChatClient(s),
        )
        runs.append((set(AnswerCache(tmp_path / name).entries), outcome.answers))
    assert runs[0] == runs[1] and len(runs[0][0]) == len(texts)
    late = httpserver.log[-1][0].get_json()
    assert "Candidates for level 2:" in late["messages"][1]["content"]  # answers of earlier rounds became candidates
    assert "enum" in late["response_format"]["json_schema"]["schema"]["properties"]["tags"]["prefixItems"][1]


# -- the stage ----------------------------------------------------------------------------------
def write_items(ws, rows):
    frame = pl.DataFrame(
        {"item": list(range(len(rows))), "item_key": [f"K{i:03d}" for i in range(len(rows))],
         "title": [t for t, _ in rows], "text": [t for t, _ in rows], "category_path": [p for _, p in rows]},
        schema_overrides={"item": pl.Int64, "category_path": pl.List(pl.Utf8)},
    )
    write_parquet(frame, ws.path(ITEMS))


def test_auto_asks_the_llm_only_for_levels_the_metadata_lacks_and_a_rerun_sends_nothing(make_workspace, httpserver):
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    ws = make_workspace("demo", **{
        "tag.source": "auto", "tag.min_count": 1, "tag.llm.base_url": httpserver.url_for("/v1"),
        "tag.llm.model": "tiny", "tag.llm.retry_wait_s": 0.01, "tag.llm.candidates": 4,
    })
    rows = [(f"makeup {c} lipstick", ["Beauty", "Makeup", "Lips", "Lipstick"]) for c in ("red", "pink", "nude")]
    rows += [(f"makeup {c} gloss", ["Beauty", "Makeup"]) for c in ("clear", "shiny")] + [("hair argan oil", [])]
    write_items(ws, rows)
    embed.run_embed(ws, StageRun("embed", "test"))
    figures = run_tag(ws, StageRun("tag", "test"))
    frame = pl.read_parquet(ws.path(TAGS))
    assert tree_violations(frame, 3) == []
    assert figures["llm"] == {"asked": 3, "sent": 3, "cached": 0, "failed": 0}
    assert frame.row(3, named=True) == {
        "item": 3, "tag_1": "Makeup", "tag_2": "Makeup > Clear", "tag_3": "Makeup > Clear > Gloss",
        "source_1": "metadata", "source_2": "llm", "source_3": "llm",
    }
    assert frame.row(5, named=True)["tag_3"] == "Hair > Argan > Oil"
    prompts = [r.get_json()["messages"][1]["content"] for r, _ in httpserver.log]
    gloss = next(p for p in prompts if "clear gloss" in p)
    assert "Known tags (keep them): level 1: Makeup" in gloss and "Candidates for level 2: Makeup > Lips" in gloss
    again = run_tag(ws, StageRun("tag", "test", fresh=True))
    assert again["llm"] == {"asked": 0, "sent": 0, "cached": 3, "failed": 0} and len(httpserver.log) == 3
    assert ws.path(LLM_CACHE).exists()


def test_llm_source_needs_an_endpoint(make_workspace):
    ws = make_workspace("demo", **{"tag.source": "llm"})
    write_items(ws, [("red lipstick", [])])
    with pytest.raises(SemrecError, match="no endpoint"):
        run_tag(ws, StageRun("tag", "test"))


@pytest.mark.slow
def test_sample_dry_run_sends_nothing_and_the_full_run_reuses_the_sampled_answers(make_workspace, httpserver):
    httpserver.expect_request(PATH).respond_with_handler(echo_tags)
    ws = make_workspace("demo", **{
        "data.demo_items": 300, "data.demo_users": 400, "tag.source": "llm", "tag.llm.base_url": httpserver.url_for("/v1"),
        "tag.llm.model": "tiny", "tag.llm.concurrency": 4, "tag.llm.candidates": 5,
    })
    preview = tag_sample(ws, limit=None, dry_run=True)
    assert len(preview["prompts"]) == 5 and preview["sent"] == 0 and len(httpserver.log) == 0
    assert "JSON" in preview["system_prompt"] and all(p.startswith("Item: ") for p in preview["prompts"].values())
    sample = tag_sample(ws, limit=10, dry_run=False)
    assert sample["sent"] == 10 and len(sample["tags"]) == 10 and not ws.path(TAGS).exists()
    assert set(preview["prompts"]) <= set(sample["tags"])  # the sample starts where the preview did
    figures = ws.ensure("tag")
    n_items = pl.read_parquet(ws.path(ITEMS)).height
    assert figures["llm"]["cached"] == 10 and figures["llm"]["sent"] == n_items - 10
    assert len(httpserver.log) == n_items
    assert figures["sources"]["llm"][0] == n_items


def test_sampling_without_an_endpoint_is_a_clear_error(make_workspace):
    ws = make_workspace("demo")
    with pytest.raises(SemrecError, match="no endpoint is configured") as error:
        tag_sample(ws, limit=3, dry_run=False)
    assert "--dry-run" in error.value.hint


def test_a_few_items_the_llm_fails_on_get_fallback_tags_and_a_warning(make_workspace, httpserver):
    def argan_fails(request) -> Response:
        if "argan" in request.get_json()["messages"][1]["content"]:
            return Response(json.dumps(chat("no idea")), content_type="application/json")
        return echo_tags(request)

    httpserver.expect_request(PATH).respond_with_handler(argan_fails)
    ws = make_workspace("demo", **{
        "tag.source": "llm", "tag.min_count": 1, "tag.llm.base_url": httpserver.url_for("/v1"),
        "tag.llm.model": "tiny", "tag.llm.max_retries": 1, "tag.llm.retry_wait_s": 0.01,
    })
    write_items(ws, [("argan oil", ["Hair"])] + [(f"red lipstick {i}", ["Makeup"]) for i in range(4)])
    embed.run_embed(ws, StageRun("embed", "test"))
    figures = run_tag(ws, StageRun("tag", "test"))  # 1 of 5 is not more than the default 20%
    assert figures["llm"]["failed"] == 1 and figures["sources"]["fallback"] == [1, 1, 1]
    assert "1 of the 5 items asked got no valid answer from tiny" in ws.reporter.text() and "it answered no idea" in ws.reporter.text()
    assert tree_violations(pl.read_parquet(ws.path(TAGS)), 3) == []


PROSE = "Sure! This lovely product is a lipstick that " + "people like a lot, and " * 30


@pytest.mark.parametrize(
    "content, problem", [(PROSE, "the answer is not JSON"), (tags_json("Makeup"), '"tags" has 1 names, expected exactly 2')],
)
def test_an_llm_that_never_answers_as_asked_fails_the_stage_naming_the_share_and_its_first_answer(
    make_workspace, httpserver, content, problem,
):
    httpserver.expect_request(PATH).respond_with_json(chat(content))
    ws = make_workspace("demo", **{
        "tag.source": "llm", "tag.levels": 2, "tag.min_count": 1, "tag.llm.base_url": httpserver.url_for("/v1"),
        "tag.llm.model": "tiny", "tag.llm.max_retries": 1, "tag.llm.retry_wait_s": 0.01,
    })
    write_items(ws, [("red lipstick", ["Makeup"]), ("argan oil", ["Hair"])])
    embed.run_embed(ws, StageRun("embed", "test"))
    with pytest.raises(StageFailed) as error:
        run_tag(ws, StageRun("tag", "test"))
    message = error.value.message
    assert error.value.exit_code == 1 and "2 of the 2 items asked (100%)" in message and "max_failure_share = 20%" in message
    shown = content if len(content) <= 200 else content[:200] + "..."  # a long answer is cut
    assert f"the first was K000: {problem}" in message and f"it answered {shown}" in message
    assert not ws.path(TAGS).exists()


def test_a_tag_run_the_llm_fails_exits_1_and_force_asks_again_only_the_items_that_failed(demo_project, httpserver):
    prose_left = {"before": 64 * 2}

    def prose_then_tags(request) -> Response:
        if prose_left["before"] > 0:
            prose_left["before"] -= 1
            return Response(json.dumps(chat(PROSE)), content_type="application/json")
        return echo_tags(request)

    httpserver.expect_request(PATH).respond_with_handler(prose_then_tags)
    runner = CliRunner()
    failed = runner.invoke(app, ["--project", str(demo_project), "tag"])
    assert failed.exit_code == 1, failed.output  # before: exit 0, every item with fallback tags and one warning
    assert "of the 62 items asked" in failed.stderr and "tag.llm.max_failure_share" in failed.stderr and "Sure! This" in failed.stderr
    prose_left["before"] = 2  # now only the first item asked fails, on both of its tries
    passed = runner.invoke(app, ["--project", str(demo_project), "tag", "--json"])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["llm"] == {"asked": 62, "sent": 63, "cached": 0, "failed": 1}
    forced = runner.invoke(app, ["--project", str(demo_project), "tag", "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["llm"] == {"asked": 1, "sent": 1, "cached": 61, "failed": 0}
