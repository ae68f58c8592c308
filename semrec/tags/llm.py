"""Tags from an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp ...).

Retrieval, then classification (the scheme HiD-VAE used for KuaiRand): the prompt gives the
item's text and, per level, the existing tags closest to the item by embedding similarity; the
model answers {"tags": [level 1, ..., level L]}. An invalid answer is sent back with the error
for another try, then counted as a failure of that item.

Structured output. Every request carries `response_format` with the JSON schema of the answer:
one string per level, held to the candidates where the prompt offers some (small models choose far
better than they write, and echo or chat when only the prompt asks for JSON), and `max_tokens`, so a
model that does not stop cannot run until its context is full. Servers differ in the form they
take: OpenAI and vLLM `{"type": "json_schema", "json_schema": {...}}`, llama-cpp-python's server
`{"type": "json_object", "schema": {...}}`. The client tries them in that order, then the prompt
alone, stepping down when a server rejects a form on its first request with it, and keeps the form
that worked for the rest of the run.

Every valid answer is appended to a JSON-lines cache in the workspace the moment it arrives,
keyed by (endpoint, model, temperature, prompt, schema); failures are not kept, so a rerun asks
them again. Prompts are deterministic: items go in a fixed seeded order, in rounds of `ROUND`
items, and the candidates of a round come from the metadata vocabulary plus the answers of earlier
rounds only (never from answers that happen to arrive first). So a rerun, or a run resumed after
an interruption, rebuilds exactly the same prompts and sends no request twice.

Retries. urllib3's `Retry`, mounted on each thread's session, retries a request on HTTP 429, 500,
502, 503 and 504, on lost connections, and on timeouts while waiting for the answer (POST is in
its allowed methods: asking for tags twice does no harm), up to `max_retries` times, waiting
`retry_wait_s`, then twice as long each time, or what the server's Retry-After says. Our code
keeps what Retry cannot do: `_Backoff` waits before the first retry too, caps and tolerates
Retry-After, counts the requests sent and ends its waits when the run stops; `ChatClient` turns
what is left after the retries into one clear error (a refused key, an unknown model or a wrong
URL at once, with no retry); and `ask_tags` sends an answer that is not the JSON asked for back
with the error, for another try, which no HTTP-level retry can do. A timeout while the body of
an answer is being read (after its headers came) is reported, not retried: Retry sees only the
wait for the headers, and a chat answer that is not streamed arrives in one piece.

Servers may echo the API key in their errors; the client removes it (and any bearer token) from
every message and log line it writes.
"""

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import requests
import torch
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, ReadTimeoutError
from urllib3.util.retry import Retry

from semrec.errors import SemrecError, StageFailed
from semrec.report import Reporter
from semrec.settings import LLMSettings
from semrec.tags import SEPARATOR, clean_name

ROUND = 64  # items whose prompts share one candidate vocabulary
MAX_NAME = 80
RETRY_STATUSES = (429, 500, 502, 503, 504)  # retried by urllib3; other 5xx fail at once
MAX_RETRY_AFTER = 60.0  # seconds: the longest a server's Retry-After makes us wait
FORMS = ("json_schema", "json_object", "prompt")  # structured output, most widely understood first; see the module docstring
REJECTED_FORM_STATUSES = (400, 422, 500)  # how servers refuse a response_format they do not take
_FORM_NAMES = {
    "json_schema": 'response_format {"type": "json_schema"}',
    "json_object": 'response_format {"type": "json_object"} with a schema',
    "prompt": "the prompt alone (no response_format)",
}
_BEARER = re.compile(r"Bearer\s+[^\s\"',;]+", re.I)
REDACTED = "<redacted>"
_UNKNOWN_MODEL = re.compile(r"model_not_found|unknown model|model\W[^.]{0,80}?(not (be )?found|does not exist)", re.I)
_KEPT = "the valid answers received so far are kept in the workspace's tags_cache/llm.jsonl and are not asked again"


class Stopped(Exception):
    """The run is stopping (an error elsewhere, or Ctrl-C): give up without recording anything."""


class InvalidAnswer(ValueError):
    """The model answered, but not with what the prompt asked for."""

    def __init__(self, message: str, answer: str | None = None):
        super().__init__(message)
        self.answer = answer


# -- prompts and answers ------------------------------------------------------------------------
def system_prompt(levels: int) -> str:
    return (
        "You assign hierarchical category tags to the items of a catalogue. "
        f'Answer with JSON only, in the form {{"tags": ["<level 1>", ..., "<level {levels}>"]}}: '
        f"exactly {levels} short category names, from the broadest to the most specific. "
        "Where a listed candidate fits, use its last name exactly; otherwise write a new short name."
    )


def build_messages(text: str, known: list[str | None], candidates: list[list[str]]) -> list[dict]:
    levels = len(known)
    lines = [f"Item: {text[:2000]}"]
    fixed = [f"level {level + 1}: {name}" for level, name in enumerate(known) if name is not None]
    if fixed:
        lines.append("Known tags (keep them): " + "; ".join(fixed))
    for level, names in enumerate(candidates):
        if names:
            lines.append(f"Candidates for level {level + 1}: " + "; ".join(names))
    lines.append(f'Answer with {{"tags": [...]}} holding {levels} names.')
    return [{"role": "system", "content": system_prompt(levels)}, {"role": "user", "content": "\n".join(lines)}]


def answer_schema(known: list[str | None], candidates: list[list[str]], candidates_only: bool = True) -> dict:
    """The JSON schema of an answer, {"tags": [one name per level]}: a known level is held to its name,
    and (with `candidates_only`) a level that has candidates to their last names."""
    levels = [_level_schema(name, names if candidates_only else []) for name, names in zip(known, candidates)]
    tags = {"type": "array", "prefixItems": levels, "minItems": len(levels), "maxItems": len(levels)}
    return {"type": "object", "properties": {"tags": tags}, "required": ["tags"], "additionalProperties": False}


def _level_schema(known: str | None, candidates: list[str]) -> dict:
    if known is not None:
        return {"type": "string", "enum": [known]}
    names = list(dict.fromkeys(path.split(SEPARATOR)[-1] for path in candidates))
    if names:
        return {"type": "string", "enum": names}
    return {"type": "string", "minLength": 1, "maxLength": MAX_NAME}


def answer_tokens(levels: int) -> int:
    """Room for an answer of `levels` names of MAX_NAME characters (about 4 characters a token) and its JSON."""
    return 16 + levels * (MAX_NAME // 4 + 4)


def prompt_key(base_url: str, model: str, temperature: float, messages: list[dict], schema: dict | None) -> str:
    """The cache key of a prompt: everything that decides the answer, the endpoint included."""
    identity = [base_url.rstrip("/"), model, temperature, messages, schema]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def parse_answer(content: str | None, levels: int) -> list[str]:
    """The L names of an answer; raises InvalidAnswer saying what is wrong with it."""
    text = re.sub(r"<think>.*?</think>", "", content or "", flags=re.DOTALL).strip()
    if not text:
        raise InvalidAnswer("the answer was empty", content)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise InvalidAnswer("the answer is not JSON: it holds no {...} object", content)
    try:
        obj = json.loads(text[start : end + 1], strict=False)  # raw newlines in a name: some grammars let them through
    except json.JSONDecodeError as e:
        raise InvalidAnswer(f"the answer is not valid JSON ({e.msg})", content) from e
    tags = obj.get("tags") if isinstance(obj, dict) else None
    if not isinstance(tags, list):
        raise InvalidAnswer('the JSON object has no "tags" list', content)
    if len(tags) != levels:
        raise InvalidAnswer(f'"tags" has {len(tags)} names, expected exactly {levels} (one per level, broadest first)', content)
    names = []
    for level, tag in enumerate(tags, 1):
        name = clean_name(tag.split(">")[-1]) if isinstance(tag, str) else ""
        if not name:
            raise InvalidAnswer(f"tag {level} is not a non-empty string", content)
        if len(name) > MAX_NAME:
            raise InvalidAnswer(f"tag {level} is longer than {MAX_NAME} characters", content)
        names.append(name)
    return names


# -- the HTTP client ----------------------------------------------------------------------------
class _Call:
    """One `complete` call: the requests it sent so far, and the event that ends its waits."""

    def __init__(self, stop: threading.Event | None):
        self.stop = stop
        self.tries = 1


class _Backoff(Retry):
    """urllib3's Retry, waiting as semrec promises: `backoff_factor` before the first retry too (urllib3
    retries at once), then doubling; a Retry-After of the server wins, capped at a minute and ignored when
    malformed (urllib3 would raise); and the wait ends the moment the run stops (no Ctrl-C waits out a
    backoff). Each wait precedes one more request, so it also counts the call's tries."""

    def __init__(self, *args, call: _Call | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.call = call or _Call(None)  # Retry.new() builds copies without it; new() below passes it on

    def new(self, **kwargs) -> "_Backoff":
        retry = super().new(**kwargs)
        retry.call = self.call
        return retry

    def sleep(self, response=None) -> None:
        wait = max(self.backoff_factor, self.get_backoff_time())
        if response is not None:
            try:
                after = self.get_retry_after(response)
            except InvalidHeader:
                after = None
            wait = wait if after is None else min(after, MAX_RETRY_AFTER)
        if self.call.stop is None:
            time.sleep(wait)
        elif self.call.stop.wait(wait):
            raise Stopped()
        self.call.tries += 1


class ChatClient:
    """POST {base_url}/chat/completions, retried with backoff on 429, 5xx, timeouts and lost connections.

    Problems no retry can fix (a refused key, an unknown model, a URL that is not a chat API)
    raise SemrecError at once; transient ones that outlast the retries raise StageFailed. The
    structured-output form steps down along FORMS when the server rejects one on its first request
    with it; the first answer in a form keeps it for the rest of the run (one client per endpoint).
    """

    def __init__(self, settings: LLMSettings, api_key: str | None = None, reporter: Reporter | None = None):
        if not settings.base_url:
            raise SemrecError("no LLM endpoint is configured (tag.llm.base_url is empty)", "set tag.llm.base_url, e.g. http://localhost:11434/v1")
        if not settings.model:
            raise SemrecError(f"tag.llm.model is empty (endpoint {settings.base_url})", "set tag.llm.model to a model the server serves")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key if api_key is not None else os.environ.get(settings.api_key_env)
        self.reporter = reporter or Reporter()
        self.sent = 0
        self.form = FORMS[0]
        self._form_confirmed = False
        self._lock = threading.Lock()
        self._local = threading.local()

    def redact(self, text: str) -> str:
        """`text` without the API key's value or any bearer token: servers echo them in their errors."""
        if self.api_key:
            text = text.replace(self.api_key, REDACTED)
        return _BEARER.sub(f"Bearer {REDACTED}", text)

    def _excerpt(self, text: str) -> str:
        return excerpt(self.redact(text or ""))

    def _session(self, call: _Call, retry_statuses: tuple[int, ...]) -> requests.Session:
        """This thread's session (kept, for its open connections), retrying with this call's policy."""
        local = self._local
        if not hasattr(local, "session"):
            local.adapter = HTTPAdapter()
            local.session = requests.Session()
            local.session.mount("http://", local.adapter)
            local.session.mount("https://", local.adapter)
        local.adapter.max_retries = _Backoff(
            total=self.settings.max_retries, status_forcelist=retry_statuses, allowed_methods={"POST"},
            backoff_factor=self.settings.retry_wait_s, respect_retry_after_header=True, raise_on_status=False, call=call,
        )
        return local.session

    def complete(self, messages: list[dict], *, max_tokens: int, schema: dict | None = None,
                 stop: threading.Event | None = None) -> str:
        """The content of the model's reply to `messages`, asked in the structured-output form the server
        takes for `schema` (the prompt alone when there is none)."""
        while True:
            form, probing = self._form_to_try(schema)
            response, call = self._post(self._body(messages, max_tokens, schema, form), stop, probing)
            if probing and self._rejects(response):
                self._step_down(form, response)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                raise self._gave_up(call, f"HTTP {response.status_code}: {self._excerpt(response.text)}",
                                    "the server is overloaded or failing: check its log, lower tag.llm.concurrency, or try again later")
            content = self._content(response)
            if schema is not None:
                self._confirm(form)
            return content

    def _body(self, messages: list[dict], max_tokens: int, schema: dict | None, form: str) -> dict:
        s = self.settings
        body = {"model": s.model, "messages": messages, "temperature": s.temperature, "max_tokens": max_tokens}
        if form == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "tags", "schema": schema}}
        elif form == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _post(self, body: dict, stop: threading.Event | None, probing: bool) -> tuple[requests.Response, _Call]:
        """One request with its HTTP-level retries (a probe of a new form is not retried on the statuses
        that mean the form was rejected): the response, and the call that counted its tries."""
        if stop is not None and stop.is_set():
            raise Stopped()
        s = self.settings
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        statuses = tuple(code for code in RETRY_STATUSES if not (probing and code in REJECTED_FORM_STATUSES))
        call = _Call(stop)
        try:
            response = self._session(call, statuses).post(self.url, json=body, headers=headers, timeout=s.timeout_s)
        except (requests.Timeout, requests.ConnectionError) as e:
            if _timed_out(e):
                raise self._gave_up(call, f"no answer within {s.timeout_s:g} s",
                                    "raise tag.llm.timeout_s or lower tag.llm.concurrency, or check the server's load") from e
            raise self._gave_up(call, f"cannot connect ({self.redact(_reason(e))})", "start the server (e.g. `ollama serve` or "
                                "`vllm serve MODEL`), or fix tag.llm.base_url in semrec.toml") from e
        finally:
            with self._lock:
                self.sent += call.tries
        return response, call

    # -- the structured-output form -------------------------------------------------------------
    def _form_to_try(self, schema: dict | None) -> tuple[str, bool]:
        """The form to send, and whether this request probes it (no answer in it has come yet)."""
        if schema is None:
            return "prompt", False
        with self._lock:
            return self.form, not self._form_confirmed and self.form != "prompt"

    def _rejects(self, response: requests.Response) -> bool:
        return response.status_code in REJECTED_FORM_STATUSES and not _UNKNOWN_MODEL.search(response.text)

    def _step_down(self, form: str, response: requests.Response) -> None:
        with self._lock:
            if self._form_confirmed or self.form != form:
                return  # an answer in this form came meanwhile, or a parallel request stepped down already
            self.form = FORMS[FORMS.index(form) + 1]
        self.reporter.info(
            f"{self.url} rejected {_FORM_NAMES[form]} (HTTP {response.status_code}: {self._excerpt(response.text)}); "
            f"trying {_FORM_NAMES[self.form]}"
        )

    def _confirm(self, form: str) -> None:
        with self._lock:
            if self._form_confirmed or self.form != form:
                return
            self._form_confirmed = True
        if form == "prompt":
            self.reporter.warn(
                f"{self.url} takes no response_format: only the prompt asks for JSON, which small models often "
                "ignore (their prose answers count as failures)"
            )
        else:
            self.reporter.info(f"structured output: {self.url} takes {_FORM_NAMES[form]}")

    # -- answers and errors ---------------------------------------------------------------------
    def _gave_up(self, call: _Call, problem: str, hint: str) -> StageFailed:
        tries = f"{call.tries} {'try' if call.tries == 1 else 'tries'}"
        return StageFailed(f"the LLM endpoint {self.url} gave up after {tries}: {problem}", f"{hint}; {_KEPT}")

    def _content(self, response: requests.Response) -> str:
        status, text = response.status_code, response.text
        if status in (401, 403):
            key = f"the key in ${self.settings.api_key_env}" if self.api_key else f"no key (${self.settings.api_key_env} is unset)"
            raise SemrecError(
                f"the LLM endpoint {self.url} refused the request (HTTP {status}, sent {key}): {self._excerpt(text)}",
                f"put a valid API key in the environment variable {self.settings.api_key_env}, "
                "or name the variable that holds it in tag.llm.api_key_env",
            )
        if status in (400, 404) and _UNKNOWN_MODEL.search(text):
            raise SemrecError(
                f"the LLM endpoint {self.url} does not know the model {self.settings.model!r} (HTTP {status}): {self._excerpt(text)}",
                f"set tag.llm.model to a model the server serves (`ollama list`, or GET {self.settings.base_url.rstrip('/')}/models)",
            )
        if status == 404:
            raise SemrecError(
                f"{self.url} is not a chat-completions endpoint (HTTP 404)",
                "tag.llm.base_url must be the API root, usually ending in /v1 (e.g. http://localhost:11434/v1)",
            )
        if status >= 400:
            raise SemrecError(f"the LLM endpoint {self.url} rejected the request (HTTP {status}): {self._excerpt(text)}",
                              "check tag.llm.* in semrec.toml")
        try:
            data = response.json()
            return data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise SemrecError(
                f"{self.url} answered with something that is not a chat-completions response: {self._excerpt(text)}",
                "tag.llm.base_url must point at an OpenAI-compatible API (usually ending in /v1)",
            ) from e

    def ask_tags(self, messages: list[dict], levels: int, stop: threading.Event | None = None,
                 schema: dict | None = None) -> list[str]:
        """Ask until the answer parses (the error is fed back each time); raises InvalidAnswer at the end.
        `schema` (see `answer_schema`) is free names at every level unless given."""
        schema = schema or answer_schema([None] * levels, [[] for _ in range(levels)])
        max_tokens = self.settings.max_tokens or answer_tokens(levels)
        conversation = messages
        for attempt in range(self.settings.max_retries + 1):
            content = self.complete(conversation, max_tokens=max_tokens, schema=schema, stop=stop)
            try:
                return parse_answer(content, levels)
            except InvalidAnswer as e:
                error = e
                conversation = messages + [
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": f"That answer is invalid: {e}. Answer again with JSON only, "
                     f'{{"tags": [...]}} holding exactly {levels} names.'},
                ]
        raise InvalidAnswer(self.redact(f"{error} (after {attempt + 1} tries)"), self.redact(error.answer or ""))


def _reason(error: Exception) -> str:
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return (match.group(1) if match else text)[:160].strip()


def excerpt(text: str, limit: int = 200) -> str:
    """`text` on one line, cut at `limit` characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _timed_out(error: requests.RequestException) -> bool:
    """A timeout: requests' own, or one that requests reports as a ConnectionError (a read timeout that
    urllib3 retried until it gave up, wrapped in MaxRetryError; or one while the body was read)."""
    cause = error.args[0] if error.args else None
    return isinstance(error, requests.Timeout) or isinstance(getattr(cause, "reason", cause), ReadTimeoutError)


# -- the answer cache ---------------------------------------------------------------------------
class AnswerCache:
    """JSON lines, one valid answer per line, appended and flushed as each arrives.

    A line cut short by a killed process is skipped on reading, and the next answer starts on a
    new line, so nothing written before it is lost. Lines without tags (failures, which earlier
    versions recorded) are skipped too, so those items are asked again.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._needs_newline = False
        if self.path.exists():
            raw = self.path.read_bytes()
            self._needs_newline = bool(raw) and not raw.endswith(b"\n")
            for line in raw.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and "key" in entry and isinstance(entry.get("tags"), list):
                    self.entries[entry["key"]] = entry

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def record(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(("\n" if self._needs_newline else "") + line)
                    f.flush()
            except OSError as e:
                raise StageFailed(f"cannot append to {self.path}: {e.strerror}", "free some disk space; earlier answers are kept") from e
            self._needs_newline = False
            self.entries[entry["key"]] = entry


# -- candidates by embedding similarity ---------------------------------------------------------
class CandidateIndex:
    """Per level, the known tags and their text embeddings; `closest` retrieves the candidates."""

    def __init__(self, levels: int, encode: Callable[[list[str]], torch.Tensor]):
        self.encode = encode
        self.tags: list[list[str]] = [[] for _ in range(levels)]
        self.vectors: list[torch.Tensor | None] = [None] * levels

    def add(self, level: int, tags) -> None:
        new = sorted(set(tags) - set(self.tags[level]))
        if not new:
            return
        vectors = torch.nn.functional.normalize(self.encode(new).float(), dim=1)  # (m, d)
        self.tags[level].extend(new)
        old = self.vectors[level]
        self.vectors[level] = vectors if old is None else torch.cat([old, vectors])

    def closest(self, level: int, vector: torch.Tensor, k: int, prefix: str = "") -> list[str]:
        """The `k` tags of `level` most similar to `vector`, among those under `prefix` when given."""
        if k <= 0 or self.vectors[level] is None:
            return []
        scores = self.vectors[level] @ torch.nn.functional.normalize(vector.float(), dim=0)  # (m,)
        if prefix:
            allowed = torch.tensor([t.startswith(prefix + SEPARATOR) for t in self.tags[level]])
            scores = scores.masked_fill(~allowed, float("-inf"))
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        return [self.tags[level][i] for i in order.tolist() if scores[i] > float("-inf")]


# -- tagging a list of items --------------------------------------------------------------------
@dataclass
class LLMJob:
    item: int
    item_key: str
    text: str
    known: list[str | None]  # names fixed by metadata (None = ask)


@dataclass
class LLMOutcome:
    answers: dict[int, list[str]] = field(default_factory=dict)  # item -> names, known levels kept
    failures: dict[int, InvalidAnswer] = field(default_factory=dict)  # item -> why its last answer was invalid
    sent: int = 0  # HTTP requests, retries included
    cached: int = 0  # items answered from the cache
    prompts: list[dict] = field(default_factory=list)  # dry run: what would be sent

    @property
    def tried(self) -> int:
        """Items with an answer or a failure, those answered from the cache included."""
        return len(self.answers) + len(self.failures)

    def figures(self) -> dict:
        return {"asked": self.tried - self.cached, "sent": self.sent, "cached": self.cached, "failed": len(self.failures)}


def _full_paths(names: list[str]) -> list[str]:
    return [SEPARATOR.join(names[: level + 1]) for level in range(len(names))]


class _Rounds:
    """The state of one tagging run: the candidate index, the cache, and what came back so far."""

    def __init__(self, settings: LLMSettings, levels: int, cache: AnswerCache, index: CandidateIndex | None,
                 item_vectors: torch.Tensor | None, client: ChatClient | None):
        self.settings, self.levels, self.cache, self.index = settings, levels, cache, index
        self.item_vectors, self.client = item_vectors, client
        self.outcome = LLMOutcome()
        self.stop = threading.Event()

    def prompt(self, job: LLMJob) -> tuple[list[dict], dict]:
        """The messages and answer schema of `job`: candidates only under the deepest known ancestor of
        each open level."""
        candidates = [[] for _ in range(self.levels)]
        known_prefix = list(takewhile(lambda name: name is not None, job.known))
        for level in range(self.levels if self.index is not None else 0):
            if job.known[level] is None:
                prefix = SEPARATOR.join(known_prefix[:level])
                candidates[level] = self.index.closest(level, self.item_vectors[job.item], self.settings.candidates, prefix)
        schema = answer_schema(job.known, candidates, self.settings.candidates_only)
        return build_messages(job.text, job.known, candidates), schema

    def ask(self, job: LLMJob, messages: list[dict], schema: dict, key: str) -> list[str] | InvalidAnswer:
        """Ask the endpoint (in a worker thread); a valid answer goes into the cache, a failure does not."""
        try:
            names = self.client.ask_tags(messages, self.levels, self.stop, schema)
        except InvalidAnswer as e:
            return e
        s = self.settings
        self.cache.record({"key": key, "base_url": s.base_url, "model": s.model, "item_key": job.item_key, "tags": names})
        return names

    def take(self, job: LLMJob, answer: list[str] | InvalidAnswer, new_paths: list[set[str]]) -> None:
        """Record an answer (known levels kept) and its tag paths, or the item's failure."""
        if isinstance(answer, InvalidAnswer):
            self.outcome.failures[job.item] = answer
            return
        names = [k if k is not None else a for k, a in zip(job.known, answer)]
        self.outcome.answers[job.item] = names
        for level, path in enumerate(_full_paths(names)):
            new_paths[level].add(path)

    def run(self, jobs: list[LLMJob], pool: ThreadPoolExecutor | None, bar) -> None:
        """One round: cached answers first, then the rest asked in parallel (only listed on a dry run, when
        `pool` is None); the new tags become candidates for the next round."""
        new_paths: list[set[str]] = [set() for _ in range(self.levels)]
        todo = []
        s = self.settings
        for job in jobs:
            messages, schema = self.prompt(job)
            key = prompt_key(s.base_url, s.model, s.temperature, messages, schema)
            entry = self.cache.get(key)
            if entry is not None:
                self.outcome.cached += 1
                self.take(job, entry["tags"], new_paths)
                bar.advance()
            elif pool is None:
                self.outcome.prompts.append({"item_key": job.item_key, "messages": messages})
                bar.advance()
            else:
                todo.append((job, messages, schema, key))
        futures = {pool.submit(self.ask, job, messages, schema, key): job for job, messages, schema, key in todo}
        for future in as_completed(futures):
            self.take(futures[future], future.result(), new_paths)
            bar.advance()
            bar.show(failed=len(self.outcome.failures))
        if self.index is not None:
            for level in range(self.levels):
                self.index.add(level, new_paths[level])


def tag_with_llm(
    jobs: list[LLMJob], *, settings: LLMSettings, levels: int, cache: AnswerCache,
    vocabulary: list[set[str]], item_vectors: torch.Tensor | None, encode: Callable[[list[str]], torch.Tensor] | None,
    reporter: Reporter, client: ChatClient | None = None, dry_run: bool = False,
) -> LLMOutcome:
    """Tag `jobs` in their order, round by round (see the module docstring); cached answers are reused.

    `vocabulary` holds per level the full tag paths known beforehand (from metadata); `encode`
    embeds tag texts in the space of `item_vectors` (neither is needed when settings.candidates = 0).
    """
    index = None
    if settings.candidates > 0 and item_vectors is not None and encode is not None:
        index = CandidateIndex(levels, encode)
        for level in range(levels):
            index.add(level, vocabulary[level])
    rounds = _Rounds(settings, levels, cache, index, item_vectors, client)
    pool = None if dry_run else ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="semrec-llm")
    label = f"tagging with {settings.model or 'the LLM'}" + (" (dry run)" if dry_run else "")
    try:
        with reporter.progress(label, total=len(jobs)) as bar:
            for start in range(0, len(jobs), ROUND):
                rounds.run(jobs[start : start + ROUND], pool, bar)
    except BaseException:
        rounds.stop.set()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            rounds.outcome.sent = client.sent
    return rounds.outcome
